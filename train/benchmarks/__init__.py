"""Benchmarks for ``python train/bench.py``: teacher and students side by side (cost, streaming
latency and quality), and training and preparation throughput."""
