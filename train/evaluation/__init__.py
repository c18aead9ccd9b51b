"""Evaluation: quality metrics, gates, the report and its plots, and the cost of running a vocoder."""
