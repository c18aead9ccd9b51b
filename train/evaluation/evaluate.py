"""Evaluate a student checkpoint: what ``train/evaluate.py`` runs.

1. Vocode every held-out mel with the student; score it against the teacher's waveform
   for the same mel (distillation fidelity) and against the ground-truth audio, and score
   the teacher against the ground truth for scale (:mod:`train.evaluation.metrics`). The
   Griffin-Lim floor (:mod:`train.evaluation.griffin_lim`) is scored against the ground
   truth too: the default gates fail a student that does not beat it.
2. Summarise (mean, 95 % interval), check the quality gates, measure the cost of teacher
   and student side by side on the same mel (:mod:`train.evaluation.cost`).
3. Write ``report.json``, ``summary.md`` and ``plots/`` into the run folder; log them to
   the configured loggers (W&B gets figures, a per-utterance table and audio).
"""

from __future__ import annotations

import datetime
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import lightning
import torch
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from train.evaluation import cost, plots, report
from train.evaluation.metrics import QualityMetrics
from train.evaluation.pool import ScoringPool, resolve_workers
from train.evaluation.score_cache import ScoreCache, signal_key
from train.evaluation.windows import WINDOW_RULE
from train.s3gen.hift import HiFTGenerator
from train.student import from_pretrained
from train.utils.devices import resolve_device
from train.utils.instantiate import instantiate_dict, load_optional_teacher
from train.utils.progress import progress
from train.utils.tracking import finish_runs
from vocos_distill.config import HOP_LENGTH, SAMPLE_RATE
from vocos_distill.errors import ConfigError, MissingFileError
from vocos_distill.files import atomic_write_text, sha256_file

log = logging.getLogger(__name__)
TRAIN_HINT = "train one with `python train/fit.py experiment=finetune`, or pass checkpoint=/path/to/student.ckpt"


def find_checkpoint(checkpoint: str | None, search_dir: str | Path) -> Path:
    """``checkpoint`` itself, the newest ``*.ckpt`` inside it if it is a folder, or (when
    ``None``) the newest ``*.ckpt`` anywhere under ``search_dir``."""
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.exists():
            raise MissingFileError(f"checkpoint={checkpoint}: no such file or folder")
        if path.is_file():
            return path
        search_dir = path
    found = [p for p in Path(search_dir).rglob("*.ckpt") if p.is_file()]
    if not found:
        raise MissingFileError(f"no student checkpoint (*.ckpt) under {search_dir}: {TRAIN_HINT}")
    # newest first; between files of the same moment (a best-*.ckpt is a hard link of last.ckpt), last.ckpt
    return max(found, key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"))


def cost_mel(mels: list[Tensor], seconds: float) -> Tensor:
    """``(1, 80, seconds * 50)``: the evaluated mels end to end, repeated if they are shorter."""
    frames = max(1, round(seconds * SAMPLE_RATE / HOP_LENGTH))
    joined = torch.cat(mels, dim=-1)
    joined = joined.repeat(1, math.ceil(frames / joined.shape[-1]))
    return joined[:, :frames].unsqueeze(0).contiguous()


class CachedFloor:
    """``mel (80, T) -> the floor's waveform``, kept in the score cache (by the mel's values and
    the floor's settings) when there is one: a data set's floor is computed once."""

    def __init__(self, floor: nn.Module, cache_dir: str | None) -> None:
        self.floor = floor
        identity = {"floor": dict(getattr(floor, "config", {})), "class": type(floor).__qualname__}
        self.cache = ScoreCache(cache_dir, identity) if cache_dir else None

    def __call__(self, mel: Tensor) -> Tensor:
        def vocode() -> Tensor:
            return self.floor(mel.unsqueeze(0))[0]

        return vocode() if self.cache is None else self.cache.get_or_compute("waveform", signal_key(mel), vocode)


def measure_cost(
    student: nn.Module, teacher: HiFTGenerator | None, mel: Tensor, settings: cost.CostSettings
) -> dict[str, Any]:
    """Teacher and student side by side on the same mel; without a loaded teacher, its
    architecture with random weights stands in."""
    if teacher is None:
        teacher_row = ("teacher (HiFT)", cost.stand_in_teacher(), "random weights, Chatterbox's HiFT architecture")
    else:
        teacher_row = ("teacher (HiFT)", teacher, f"loaded ({getattr(teacher, 'weights_id', '?')})")
    models = [teacher_row, ("student (Vocos)", student, "checkpoint")]
    return cost.compare(models, mel, settings)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the evaluation described by ``conf/evaluate.yaml``; returns the report."""
    lightning.seed_everything(cfg.seed, workers=True, verbose=False)
    out = Path(cfg.paths.output_dir)
    checkpoint = find_checkpoint(cfg.get("checkpoint"), cfg.paths.log_dir)
    device = resolve_device(cfg.device)
    log.info("evaluating %s on %s", checkpoint, device)
    student = from_pretrained(checkpoint, device=device)
    parent_path = Path(cfg.parent).expanduser() if cfg.get("parent") else None
    parent = from_pretrained(parent_path, device=device) if parent_path else None
    teacher, teacher_info = load_optional_teacher(cfg.get("teacher"), cfg.require_teacher)
    datamodule = hydra.utils.instantiate(cfg.data, teacher=teacher)
    datamodule.prepare_data()
    dataset = datamodule.evaluation_set(cfg.split, cfg.get("max_frames"))
    count = len(dataset) if cfg.get("max_utterances") is None else min(len(dataset), cfg.max_utterances)
    settings = OmegaConf.to_container(cfg.metrics, resolve=True)
    metrics_target = hydra.utils.get_class(settings.pop("_target_"))
    if metrics_target is not QualityMetrics:
        raise ConfigError(f"metrics._target_: expected {QualityMetrics.__module__}.QualityMetrics")
    workers = resolve_workers(cfg.get("workers", "auto"))
    pool = ScoringPool(settings, min(workers, count), cfg.scoring.window_seconds, cfg.scoring.max_windows)
    floor = hydra.utils.instantiate(cfg.floor) if cfg.get("floor") else None
    vocode_floor = CachedFloor(floor, settings.get("cache_dir")) if floor is not None else None
    gates = report.build_gates(cfg.get("gates"))
    log.info("scoring %d utterances in %s", count, f"{pool.workers} processes" if pool.workers > 1 else "this process")

    mels: list[Tensor] = []

    def jobs() -> Iterator[tuple[str, dict[str, Tensor], bool]]:
        """Each utterance vocoded by the student (and parent, floor), in order."""
        for index in range(count):
            item = dataset[index]
            with torch.inference_mode():
                wav = student(item["mel"].unsqueeze(0).to(device))[0].float().cpu()
            wavs = {"student": wav, **{system: item[system] for system in ("teacher", "audio") if system in item}}
            if parent is not None:
                with torch.inference_mode():
                    wavs["parent"] = parent(item["mel"].unsqueeze(0).to(device))[0].float().cpu()
            if floor is not None and "audio" in item:
                wavs["griffin_lim"] = vocode_floor(item["mel"])
            mels.append(item["mel"])
            yield dataset.entries[index][0].name, wavs, index < cfg.plots.mel_examples

    utterances, examples, hits, misses = [], [], 0, 0
    scored = progress(iterable=pool.map(jobs()), total=count, desc="evaluate", unit="utt", disable=not cfg.progress_bar)
    # While workers hold every core, this process only vocodes ahead of them: one thread, so that its
    # thread pool does not compete with theirs
    threads = torch.get_num_threads()
    if pool.workers > 1 and device.type == "cpu":
        torch.set_num_threads(1)
    try:
        for record, kept, (reused, computed) in scored:
            utterances.append(record)
            hits, misses = hits + reused, misses + computed
            if kept is not None:
                examples.append((record["name"], *kept))
    finally:
        torch.set_num_threads(threads)
    if vocode_floor is not None and vocode_floor.cache is not None:
        hits, misses = hits + vocode_floor.cache.hits, misses + vocode_floor.cache.misses
    if settings.get("cache_dir"):
        log.info("score cache %s: %d analyses reused, %d computed", settings["cache_dir"], hits, misses)

    summary = report.summarise_groups(utterances)
    gate_results = [gate.check(summary) for gate in gates]
    cost_section = None
    if cfg.cost:
        how = hydra.utils.instantiate(cfg.cost, _convert_="all")
        log.info("measuring the cost of teacher and student on %.1f s of mels", how.seconds)
        cost_section = measure_cost(student, teacher, cost_mel(mels, how.seconds), how)

    plot_files = write_plots(out / "plots", utterances, examples)
    result = {
        "schema_version": report.SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": {
            "path": str(checkpoint),
            "sha256": sha256_file(checkpoint),
            "params": cost.count_parameters(student),
            "config": student.config.to_dict(),
        },
        "parent": None
        if parent is None
        else {"path": str(parent_path), "sha256": sha256_file(parent_path), "config": parent.config.to_dict()},
        "teacher": {**teacher_info, "seed": cfg.data.teacher_seed},
        "floor": None if floor is None else dict(floor.config),
        "data": {
            "sources": datamodule.sources,
            "mel_source": dict(datamodule.mel_sources),
            "split": cfg.split,
            "utterances": len(utterances),
            "seconds": sum(u["seconds"] for u in utterances),
            "skipped": [{"name": n, "reason": r} for n, r in datamodule.skipped],
        },
        "metrics": report.metric_definitions(),
        "scoring": {
            "window_seconds": cfg.scoring.window_seconds,
            "max_windows": cfg.scoring.max_windows,
            "rule": WINDOW_RULE,
            "cache": {"hits": hits, "misses": misses} if settings.get("cache_dir") else None,
        },
        "utterances": utterances,
        "summary": summary,
        "gates": gate_results,
        "verdict": report.verdict(gate_results),
        "cost": cost_section,
        "files": {"summary": "summary.md", "plots": [str(p.relative_to(out)) for p in plot_files]},
    }
    result = report.without_nan(result)  # as written: NaN is null in JSON
    report.write_report(result, out / "report.json")
    markdown = report.to_markdown(result)
    atomic_write_text(out / "summary.md", markdown)
    log.info("evaluation report: %s\n%s", out / "report.json", markdown)
    loggers = instantiate_dict(cfg.get("logger"))
    try:
        log_to_loggers(loggers, cfg, result, plot_files, examples)
    finally:
        finish_runs(loggers)
    return result


def write_plots(folder: Path, utterances: list[dict], examples: list[tuple]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index, (name, utterance_mels, _) in enumerate(examples):
        path = folder / f"mel_{index}.png"
        plots.save(plots.mel_comparison(name, utterance_mels), path)
        files.append(path)
    groups = [g for g in report.GROUPS if any(g in u["scores"] for u in utterances)]
    if groups:
        path = folder / "metrics.png"
        plots.save(plots.metric_distributions(utterances, groups), path)
        files.append(path)
    return files


def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Scalars for any logger: summary means, gate outcomes (1 pass / 0 fail), cost figures."""
    flat = {
        f"eval/{group}/{metric}": stat["mean"]
        for group, stats in result["summary"].items()
        for metric, stat in stats.items()
        if stat["mean"] is not None
    }
    flat.update(
        {f"gate/{g['name']}": float(g["status"] == "pass") for g in result["gates"] if g["status"] != "skipped"}
    )
    for row in (result["cost"] or {}).get("models", []):
        model = row["model"].split()[0]
        for key in ("rtf_cpu_1_thread", "rtf_cpu_all_threads", "rtf_cuda", "peak_rss_mb", "params"):
            if row[key] is not None:
                flat[f"cost/{model}/{key}"] = float(row[key])
    return flat


def log_to_loggers(
    loggers: list[Logger], cfg: DictConfig, result: dict[str, Any], plot_files: list[Path], examples: list[tuple]
) -> None:
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        logger.log_metrics(flat_metrics(result), step=0)
        if isinstance(logger, WandbLogger):
            import wandb

            run = logger.experiment
            run.summary["verdict"] = result["verdict"]
            media: dict[str, Any] = {f"plots/{p.stem}": wandb.Image(str(p)) for p in plot_files}
            columns = ["utterance", "group", *result["metrics"]]
            rows = [
                [u["name"], group, *(scores.get(m) for m in result["metrics"])]
                for u in result["utterances"]
                for group, scores in u["scores"].items()
            ]
            media["eval/utterances"] = wandb.Table(columns=columns, data=rows)
            for index, (name, _, wavs) in enumerate(examples):
                for system, wav in wavs.items():
                    media[f"audio/{index}_{system}"] = wandb.Audio(wav.numpy(), sample_rate=SAMPLE_RATE, caption=name)
            run.log(media)
            run.finish()
        else:
            logger.finalize("success")
