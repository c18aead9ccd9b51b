"""Listening tests: listeners' answers, aggregated into the evaluation report (``train/listen.py``)."""
