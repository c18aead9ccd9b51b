"""Compression of a trained student: structured pruning (:mod:`.pruning`), quantization-aware
training (:mod:`.qat`), the int8 runtime (:mod:`.int8`) and how it was chosen (:mod:`.runtime`)."""
