"""Analyses of RMT that need no trained model: ``flops`` counts forward-pass FLOPs."""
