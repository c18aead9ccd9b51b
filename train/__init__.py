"""vocos-distill: distil Chatterbox's HiFT vocoder into a small Vocos student.

Entry points (run from the repository root): ``train/fit.py``, ``train/prepare.py``,
``train/evaluate.py``, ``python train/bench.py``. The library is grouped by job:
``s3gen`` (what must equal Chatterbox), ``student``, ``data``, ``training``, ``evaluation``,
``compress``, ``release``; ``utils`` holds what every job shares.
"""
