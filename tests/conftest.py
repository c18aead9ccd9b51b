import os
import tempfile

import pytest

# One thread per test process when pytest-xdist runs one process per core (README: "Tests"): the
# suite is mostly Python-bound (tracing, training loops, process start-up), and intra-op threads
# beyond the cores would only contend. Subprocesses the tests start inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# int8 self-checks remember their answers (vocos_distill.int8_check): in a folder of this test session's own
os.environ["VOCOS_DISTILL_CACHE"] = tempfile.mkdtemp(prefix="vocos-distill-cache-")


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B in offline mode with every directory it writes under ``tmp_path``."""
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _working_directory_kept():
    """A test that leaves the process elsewhere (or in a folder since removed) would break every
    later test of its worker that composes a config (Hydra records the working directory)."""
    before = os.getcwd()
    yield
    try:
        after = os.getcwd()
    except FileNotFoundError:
        after = None
    if after != before:
        os.chdir(before)
        pytest.fail(f"the test left the working directory at {after} (was {before})")


def pytest_collection_modifyitems(config, items):
    """The longest files first (seconds per file from a full run, ``tests/durations.json``; a file
    not listed counts as short): with one worker per core (``--dist loadfile``) the long files
    start at once and the short ones fill in at the end, instead of a long file starting last and
    running alone. Only the order changes."""
    import json
    from pathlib import Path

    seconds = json.loads((Path(__file__).parent / "durations.json").read_text())
    order = {path: i for i, path in enumerate(dict.fromkeys(item.fspath.basename for item in items))}
    items.sort(key=lambda item: (-seconds.get(item.fspath.basename, 0), order[item.fspath.basename]))
