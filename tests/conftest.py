import os
import tempfile

import pytest

# int8 self-checks remember their answers (train.runtime.int8_check): in a folder of this test session's own
os.environ["VOCOS_DISTILL_CACHE"] = tempfile.mkdtemp(prefix="vocos-distill-cache-")


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B in offline mode with every directory it writes under ``tmp_path``."""
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
