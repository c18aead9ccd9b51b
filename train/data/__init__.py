"""Data: source discovery, the content-keyed cache of mels and teacher waveforms, and the data module."""
