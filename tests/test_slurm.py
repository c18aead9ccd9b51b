"""SLURM through hydra-submitit-launcher: what would be submitted, checked without a cluster."""

import os
import stat

import pytest
from helpers import CONF
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf

import train.utils.hydra_setup  # noqa: F401  (resolvers)
from train.utils.hydra_setup import run_name


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """An ``srun`` on PATH (submitit refuses to build a SLURM executor without one); nothing runs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_the_slurm_launcher_asks_for_one_task_per_gpu_on_every_node(tmp_path, fake_slurm, monkeypatch):
    import submitit

    overrides = [
        "hydra/launcher=slurm",
        "experiment=distill",
        "trainer=slurm",
        "trainer.num_nodes=4",
        "hydra.launcher.partition=gpu",
        f"paths.log_dir={tmp_path / 'ck'}",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    assert cfg.trainer.num_nodes == 4 and cfg.trainer.devices == 8 and cfg.trainer.precision == "bf16-mixed"
    assert "ddp" in cfg.trainer.strategy

    submitted = {}

    def capture(self, fn, *iterables):
        submitted["sbatch"] = self._executor._make_submission_file_text("python -u -m submitit.core._submit X", "uid")
        submitted["jobs"] = list(zip(*iterables, strict=True))
        return []

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", capture)
    HydraConfig.instance().set_config(cfg)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=lambda c: None, config=cfg)
    launcher.launch([["experiment=distill", "trainer=slurm", "trainer.num_nodes=4"]], initial_job_idx=0)

    sbatch = submitted["sbatch"]
    for line in (
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=2880",
        "#SBATCH --signal=USR2@120",
    ):
        assert line in sbatch, line
    assert "srun" in sbatch and "--open-mode=append" in sbatch
    assert launcher.params["max_num_timeout"] == 20  # requeued after time-outs
    (overrides_of_job, dir_key, number, _, _) = submitted["jobs"][0]
    assert dir_key == "hydra.sweep.dir" and number == 0 and "trainer.num_nodes=4" in overrides_of_job
    sweep = OmegaConf.select(cfg, "hydra.sweep.dir")
    assert sweep.startswith(str(tmp_path / "ck" / "runs" / "distill")) and os.path.isdir(sweep)


def test_a_slurm_job_and_its_requeued_self_share_one_run_folder(monkeypatch):
    for var in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NAME", "fit")
    assert run_name() == run_name() == "slurm-4242"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert run_name() == "slurm-77_3"
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # an salloc shell: every run its own folder
    assert run_name() != run_name()
