"""Training: the LightningModule, its losses, checkpoints and progress, and building a run from config."""
