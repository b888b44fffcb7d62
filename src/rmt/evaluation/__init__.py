"""Evaluation: a task's metric by input length, for the RMT and its baselines; tables and plots."""

from .by_length import evaluate, evaluate_models, format_table, metric_by_length, metric_names, plot_by_length

__all__ = ["evaluate", "evaluate_models", "format_table", "metric_by_length", "metric_names", "plot_by_length"]
