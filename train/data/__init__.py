"""Data: reading audio and mels (:mod:`.audio`), the content-keyed cache of mels and teacher
waveforms (:mod:`.cache`), the data module (:mod:`.datamodule`), preparing the cache as
``train/prepare.py`` does (:mod:`.prepare`), the held-out utterances checked after training
(:mod:`.held_out`) and the offline speech corpus ``train/corpus.py`` builds (:mod:`.speech`)."""
