"""The prepare stage: fill the data cache before training, with any number of processes.

``python train/prepare.py experiment=...`` builds the experiment's teacher and data module
and prepares this process's share (:meth:`VocoderDataModule.prepare`). The share comes from
the launcher: torchrun (``RANK`` / ``WORLD_SIZE``), a SLURM array (``SLURM_ARRAY_TASK_*``)
or SLURM tasks (``SLURM_PROCID`` / ``SLURM_NTASKS``). No process waits for another while
working; under torchrun the processes meet once at the end, so that the first can report
the total. Each writes ``prepare_rank<R>.json`` (its counts and throughput) in the run folder.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist
from omegaconf import DictConfig

from train.data.datamodule import VocoderDataModule
from train.data.fill import PrepareReport
from train.s3gen.flow import save_stand_in
from train.s3gen.hift import HiFTGenerator
from train.s3gen.teacher import save_teacher
from train.utils.hydra_setup import project_root
from train.utils.instantiate import instantiate, instantiate_with_weights
from vocos_distill.files import atomic_write_text, remove_stale_temporaries

log = logging.getLogger(__name__)


def process_share() -> tuple[int, int, str]:
    """(this process's index, number of processes, the launcher that said so)."""
    env = os.environ
    if int(env.get("WORLD_SIZE", 1)) > 1:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), "torchrun"
    if int(env.get("SLURM_ARRAY_TASK_COUNT", 1)) > 1:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        return int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"]), "SLURM array"
    if int(env.get("SLURM_NTASKS", 1)) > 1 and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), "SLURM tasks"
    return 0, 1, "single process"


def summarise(reports: list[PrepareReport]) -> str:
    computed = sum(len(r.prepared_keys) for r in reports)
    audio = sum(r.audio_seconds for r in reports)
    wall = max(r.wall_seconds for r in reports)
    return (
        f"prepared {computed} utterances ({audio:.1f} s of audio) in {wall:.1f} s with {len(reports)} "
        f"process(es): {audio / wall if wall else 0.0:.2f} s of audio per second; "
        f"{sum(r.already_cached for r in reports)} were cached already, {sum(len(r.skipped) for r in reports)} skipped"
    )


def prepare(cfg: DictConfig) -> dict[str, Any]:
    """Prepare this process's share of the experiment's data; returns its report as a dict."""
    rank, world_size, launcher = process_share()
    teacher = instantiate_with_weights(cfg.teacher) if cfg.get("teacher") else None
    datamodule: VocoderDataModule = instantiate(cfg.data, teacher=teacher, progress=True)
    if rank == 0 and datamodule.cache.root.is_dir():
        remove_stale_temporaries(datamodule.cache.root)
    log.info("preparing share %d of %d (%s) into %s", rank + 1, world_size, launcher, datamodule.cache.root)
    report = datamodule.prepare(rank, world_size)
    out = Path(cfg.paths.output_dir)
    record = {"finished": datetime.datetime.now().isoformat(timespec="seconds"), **dataclasses.asdict(report)}
    atomic_write_text(out / f"prepare_rank{rank}.json", json.dumps(record, indent=1))
    reports = [report]
    if launcher == "torchrun" and dist.is_available():
        dist.init_process_group("gloo", timeout=datetime.timedelta(days=1))  # only to meet at the end
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, report)
        dist.destroy_process_group()
        reports = gathered
    if rank == 0:
        log.info("%s", summarise(reports))
    return record


def prepare_throughput(
    processes: Sequence[int], overrides: Sequence[str] = (), mel_source: str = "audio"
) -> list[dict[str, Any]]:
    """Seconds of audio (and clips) prepared per second with ``N`` processes (``torchrun
    --standalone``), for each ``N``: ``train/prepare.py experiment=distill`` on the bundled corpus
    (or what ``overrides`` choose) into a fresh cache, with a stand-in checkpoint of Chatterbox's
    size: HiFT alone for ``mel_source=audio``, else the whole S3Gen (random weights) whose flow
    makes the mels."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if mel_source == "audio":
            teacher = save_teacher(HiFTGenerator(), Path(tmp) / "s3gen.safetensors")
        else:
            teacher = save_stand_in(Path(tmp) / "s3gen.safetensors")
        for count in processes:
            out = Path(tmp) / f"processes{count}"
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc-per-node={count}",
                str(project_root() / "train" / "prepare.py"),
                "experiment=distill",
                f"teacher.checkpoint={teacher}",
                f"paths.log_dir={out}",
                "data.progress=false",
                f"data.mel_source={mel_source}",
                *overrides,
            ]
            started = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode:
                raise RuntimeError(f"train/prepare.py with {count} processes failed:\n{result.stderr[-3000:]}")
            total = time.perf_counter() - started
            reports = [json.loads(p.read_text()) for p in sorted(out.rglob("prepare_rank*.json"))]
            audio = sum(r["audio_seconds"] for r in reports)
            work = max(r["wall_seconds"] for r in reports)
            clips = sum(len(r["prepared_keys"]) for r in reports)
            rows.append(
                {
                    "mel_source": mel_source,
                    "processes": count,
                    "clips": clips,
                    "clips_per_s": clips / work,
                    "audio_s": audio,
                    "prepare_s": work,
                    "audio_s_per_s": audio / work,
                    "with_startup_s": total,
                }
            )
    return rows
