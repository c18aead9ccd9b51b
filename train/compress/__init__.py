"""Compression (structured pruning, quantization-aware training, int8 runtimes): empty until it lands."""
