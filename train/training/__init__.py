"""Training as ``train/fit.py`` runs it (:mod:`.fit`): the LightningModule, its losses,
checkpoints and progress."""
