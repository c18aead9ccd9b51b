"""Running training for real: run folders, bounded checkpoints, resume (also after SIGKILL), progress, messages."""

import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, compose, write_clips

from train.training.fit import fit

AUDIO_ONLY = ["~teacher", "module.target_weights={teacher:0,audio:1}"]


@pytest.fixture
def clips(tmp_path):
    return write_clips(tmp_path / "clips")


def tiny(tmp_path, clips, *extra, run="run"):
    """The tiny experiment on five clips, its run folder ``tmp_path / run``."""
    return compose(
        [
            "experiment=tiny",
            *AUDIO_ONLY,
            f"data.audio_dirs=[{clips}]",
            "data.batch_size=1",
            f"paths.output_dir={tmp_path / run}",
            "validate_first=false",
            *extra,
        ],
        tmp_path,
    )


def checkpoint_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.ckpt"))


# -- defect: the disk filled with every checkpoint ----------------------------------------------
@pytest.mark.slow
def test_checkpoints_are_last_plus_the_best_few_with_no_duplicate_bytes(tmp_path, clips):
    result = fit(tiny(tmp_path, clips, "trainer.max_steps=12", "trainer.val_check_interval=2"))
    folder = tmp_path / "run" / "checkpoints"
    files = checkpoint_files(folder)
    top_k = 3  # conf/callbacks/default.yaml
    assert (folder / "last.ckpt") in files and len(files) <= top_k + 1, files
    assert len({p.stat().st_ino for p in files}) == len(files) or (folder / "last.ckpt").stat().st_nlink == 2
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 12
    scores = [torch.load(p, weights_only=True)["global_step"] for p in files if p.name != "last.ckpt"]
    assert scores, "the best checkpoints by validation mel distance are kept"
    assert result["last_checkpoint"] == str(folder / "last.ckpt")


# -- defect: resume was manual ----------------------------------------------------------------
@pytest.mark.slow
def test_ckpt_path_last_resumes_the_newest_run_of_the_same_experiment(tmp_path, clips, caplog):
    schedule = "module.scheduler.total_steps=8"
    first = fit(tiny(tmp_path, clips, "trainer.max_steps=4", schedule, run="checkpoints/runs/tiny/a"))
    fit(tiny(tmp_path, clips, "trainer.max_steps=2", schedule, "task_name=other", run="checkpoints/runs/other/b"))
    with caplog.at_level("INFO"):
        second = fit(
            tiny(tmp_path, clips, "trainer.max_steps=8", schedule, "ckpt_path=last", run="checkpoints/runs/tiny/c")
        )
    assert second["resumed_from"] == first["last_checkpoint"]
    assert first["last_checkpoint"] in caplog.text  # says which file it took
    assert torch.load(second["last_checkpoint"], weights_only=True)["global_step"] == 8


def test_ckpt_path_last_without_any_run_says_where_it_looked(tmp_path, clips):
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=last.*runs/tiny"):
        fit(tiny(tmp_path, clips, "ckpt_path=last", run="checkpoints/runs/tiny/x"))


@pytest.mark.slow
def test_a_run_folder_that_already_holds_a_checkpoint_resumes_by_itself(tmp_path, clips):
    """What a requeued SLURM job sees: its own run folder, with the checkpoint of its last life."""
    fit(tiny(tmp_path, clips, "trainer.max_steps=4", "module.scheduler.total_steps=8"))
    again = fit(tiny(tmp_path, clips, "trainer.max_steps=8", "module.scheduler.total_steps=8"))
    assert again["resumed_from"] == str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert torch.load(again["last_checkpoint"], weights_only=True)["global_step"] == 8


# -- defect: resuming ran a pickle -----------------------------------------------------------
class Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.slow
def test_resume_never_unpickles_code_even_when_the_environment_allows_it(tmp_path, clips, monkeypatch):
    fit(tiny(tmp_path, clips, "trainer.max_steps=2"))
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    marker = tmp_path / "code-ran"
    checkpoint["planted"] = Planted(str(marker))
    crafted = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, crafted)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(pickle.UnpicklingError):
        fit(tiny(tmp_path, clips, "trainer.max_steps=4", f"ckpt_path={crafted}", run="resumed"))
    assert not marker.exists()


# -- defect: two runs started in the same second shared a folder ---------------------------------
def test_run_folders_are_unique_even_within_one_second(tmp_path):
    from helpers import CONF
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    folders = set()
    for _ in range(3):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = hydra_compose("train", overrides=["experiment=tiny"], return_hydra_config=True)
            folders.add(OmegaConf.select(cfg, "hydra.run.dir"))
    assert len(folders) == 3, folders


# -- defect: progress printed an epoch line per two batches ------------------------------------
@pytest.mark.slow
def test_progress_is_counted_in_steps_not_epochs(tmp_path, clips, capsys):
    fit(tiny(tmp_path, clips, "trainer.max_steps=10", "callbacks.progress.enable=true", "trainer.val_check_interval=5"))
    err = capsys.readouterr().err
    assert "Epoch" not in err
    assert "10/10" in err and "loss_g" in err


# -- what a newcomer sees --------------------------------------------------------------------
def test_a_mistyped_override_names_the_key_and_the_expected_type(tmp_path):
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import ValidationError

    for override, key in [
        ("trainer.max_steps=abc", "trainer.max_steps"),
        ("data.batch_size=two", "data.batch_size"),
        ("module.mel_loss_weight=heavy", "module.mel_loss_weight"),
    ]:
        with pytest.raises((ConfigCompositionException, ValidationError)) as err:
            compose([override], tmp_path)
        assert key in str(err.value) or key in str(err.value.__cause__), override


@pytest.mark.slow
def test_the_end_of_a_run_names_its_folder_and_how_to_resume(tmp_path, clips, caplog):
    with caplog.at_level("INFO"):
        result = fit(tiny(tmp_path, clips, "trainer.max_steps=2"))
    assert str(tmp_path / "run") in caplog.text and result["last_checkpoint"] in caplog.text
    assert "ckpt_path=last" in caplog.text


class ClosingServer:
    """A TCP server on 127.0.0.1 that accepts connections, counts them and hangs up: a Hub that is down."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.connections = 0
        self.stopped = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def serve(self):
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def stop(self):
        self.stopped = True
        self.thread.join()
        self.sock.close()


@pytest.mark.slow
def test_offline_the_main_job_says_what_to_do_once_and_leaves_nothing(tmp_path):
    hub = ClosingServer()
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "PYTHONUNBUFFERED": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    try:
        result = subprocess.run(
            [sys.executable, str(REPO / "train" / "fit.py"), "experiment=distill", f"paths.log_dir={tmp_path / 'ck'}"],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=300,
        )
    finally:
        hub.stop()
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert hub.connections <= 1, f"asked the Hub {hub.connections} times"
    assert "Traceback" not in output, output[-3000:]
    assert output.count("experiment=finetune") == 1 and "teacher.checkpoint=" in output
    assert not list((tmp_path / "ck").rglob("runs/distill/*")), "no empty run folder is left behind"


@pytest.mark.slow
def test_help_says_what_each_experiment_does_without_loading_torch(tmp_path):
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(REPO / "train" / "fit.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "lightning" not in imported
    experiments = ("experiment=distill", "experiment=cpu", "experiment=finetune", "experiment=tiny")
    for option in (*experiments, "compress=prune", "compress=qat"):
        assert option in result.stdout
    assert "train/prepare.py" in result.stdout and "train/evaluate.py" in result.stdout
    evaluate = subprocess.run(
        [sys.executable, str(REPO / "train" / "evaluate.py"), "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert evaluate.returncode == 0
    assert "checkpoint=" in evaluate.stdout
    for group in ("student:", "module:", "trainer:", "callbacks:"):
        assert group not in evaluate.stdout, f"evaluate --help lists {group}"
    quantize = subprocess.run(
        [sys.executable, "-X", "importtime", str(REPO / "train" / "quantize.py"), "--help"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert quantize.returncode == 0 and "checkpoint=PATH" in quantize.stdout and "min_snr_db" in quantize.stdout
    assert "torch" not in {line.split("|")[-1].strip() for line in quantize.stderr.splitlines() if "|" in line}


# -- SIGKILL at random points, then resume ------------------------------------------------------
def _start(tmp_path, clips, *extra):
    cmd = [
        sys.executable,
        str(REPO / "train" / "fit.py"),
        "experiment=tiny",
        *AUDIO_ONLY,
        f"data.audio_dirs=[{clips}]",
        "data.batch_size=1",
        "student.dim=256",
        "student.intermediate_dim=768",
        "student.num_layers=4",  # ~40 MB checkpoints: writes long enough to be caught in the act
        "trainer.max_steps=16",
        "trainer.val_check_interval=4",
        "callbacks.checkpoints.every_n_train_steps=1",
        "module.scheduler.total_steps=16",
        f"paths.log_dir={tmp_path / 'ck'}",
        *extra,
    ]
    env = {**os.environ, "TMPDIR": str(tmp_path / "systemp"), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_when(proc, condition, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.001)
    return False


@pytest.mark.slow
def test_sigkill_anywhere_then_ckpt_path_last_reaches_max_steps_with_no_corrupt_file(tmp_path, clips):
    (tmp_path / "systemp").mkdir()
    runs = tmp_path / "ck" / "runs" / "tiny"

    def newest_step() -> int:
        steps = []
        for path in runs.rglob("last.ckpt"):
            try:
                steps.append(torch.load(path, weights_only=True, map_location="cpu")["global_step"])
            except Exception:  # noqa: BLE001 - a corrupt file fails the test below
                steps.append(-1)
        return max(steps, default=0)

    # 1. killed while preparing the cache or building (before any checkpoint)
    proc = _start(tmp_path, clips)
    assert _kill_when(proc, lambda: (tmp_path / "ck" / "cache").exists())
    # 2. killed in the middle of writing a checkpoint (a temporary beside it), once one exists
    proc = _start(tmp_path, clips)
    assert _kill_when(proc, lambda: any(runs.rglob("last.ckpt")) and any(runs.rglob(".*.ckpt.*.tmp")))
    assert any(runs.rglob(".*.ckpt.*.tmp")), "the kill left a partial write"
    reached = newest_step()
    assert reached >= 1
    # 3. resumed, then killed during a training step, between checkpoints
    before = {p.parent for p in runs.rglob("last.ckpt")}
    proc = _start(tmp_path, clips, "ckpt_path=last")
    assert _kill_when(proc, lambda: {p.parent for p in runs.rglob("last.ckpt")} - before and not time.sleep(0.3))
    assert newest_step() > reached
    # 4. resumed to the end
    proc = _start(tmp_path, clips, "ckpt_path=last")
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-4000:]
    assert "resuming from" in output
    assert newest_step() == 16
    for path in (tmp_path / "ck").rglob("*.ckpt"):
        torch.load(path, weights_only=True, map_location="cpu")  # every checkpoint left is whole
    assert not list(runs.rglob("*.tmp")), "temporaries of killed runs are removed at the next start"
    leftovers = [p for p in (tmp_path / "systemp").rglob("*") if p.is_file()]
    assert not [p for p in leftovers if p.name.startswith("tmp") or p.stat().st_size > 1 << 20], leftovers
    for noise in ("Tip:", "litlogger", "log_every_n_steps", "DeprecationWarning", "Epoch "):
        assert noise not in output, noise


@pytest.mark.parametrize("stage", ["prune", "qat", "lookahead"])
@pytest.mark.parametrize("task", ["x", "x-{suffix}"])
def test_a_compression_stage_suffixes_the_run_group_once(tmp_path, stage, task):
    """``task_name=x compress=qat`` runs in ``runs/x-qat/``; so does a task already named after
    its stage's folder (``task_name=x-qat``), not ``x-qat-qat``."""
    suffix = "lookahead4" if stage == "lookahead" else stage
    extra = ["student.lookahead=4"] if stage == "lookahead" else []
    cfg = compose(["experiment=tiny", f"task_name={task.format(suffix=suffix)}", f"compress={stage}", *extra], tmp_path)
    assert cfg.run_group == f"x-{suffix}"
