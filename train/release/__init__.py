"""Release, as ``train/export.py`` and ``train/publish.py`` run it: the export in vocos' layout and as
ONNX (:mod:`.export`, :mod:`.vocos_layout`), the model card (:mod:`.card`), the listening page
(:mod:`.listen`) and publishing to the Hub and W&B (:mod:`.publish`). Using a release is
:mod:`vocos_distill`'s job."""
