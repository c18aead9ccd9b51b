"""Compression of a trained student: structured pruning (:mod:`.pruning`), quantization-aware
training (:mod:`.qat`), both Lightning callbacks of one kind (:mod:`.stage`); the int8 graph of a
QAT student, as ``train/quantize.py`` writes it (:mod:`.quantize`), and the comparison of the
int8 runtimes it was chosen from (:mod:`.compare`)."""
