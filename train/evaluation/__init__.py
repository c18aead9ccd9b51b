"""Evaluation as ``train/evaluate.py`` runs it (:mod:`.evaluate`): quality metrics, gates, the
report and its plots, the cost of running a vocoder, the Griffin-Lim floor, learning curves and
the magnitude-or-phase diagnosis."""
