"""Benchmarks for ``python -m train.bench``: teacher and students side by side (cost, streaming
latency and quality), and training and preparation throughput."""
