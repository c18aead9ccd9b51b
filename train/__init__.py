"""vocos-distill: distil Chatterbox's HiFT vocoder into a small Vocos student."""

__version__ = "0.1.0"
