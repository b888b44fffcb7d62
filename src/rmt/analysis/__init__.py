"""Analyses of RMT: ``flops`` counts forward-pass FLOPs (no model needed); ``attention`` draws a
trained model's attention maps of memory operations per segment."""
