"""Compression of a trained student: structured pruning (:mod:`.pruning`), quantization-aware
training (:mod:`.qat`), writing the int8 runtime (:mod:`.export`) and how it was chosen (:mod:`.runtime`)."""
