"""Build everything from a composed config and train: what ``train/fit.py`` runs."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import lightning
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

import train.utils.hydra_setup  # noqa: F401  (resolvers the configs use)
from train.compress.stage import CompressionError, CompressionStage
from train.student import from_pretrained
from train.training.module import check_precision
from train.utils.instantiate import instantiate, instantiate_dict, instantiate_with_weights
from train.utils.tracking import finish_runs
from vocos_distill.config import HOP_LENGTH, N_MELS
from vocos_distill.errors import ConfigError, MissingFileError
from vocos_distill.files import remove_stale_temporaries
from vocos_distill.onnx import OnnxArtifactError, is_onnx

log = logging.getLogger(__name__)
LAST = "last.ckpt"


def build(cfg: DictConfig) -> tuple[Any, Any, Trainer]:
    """(datamodule, module, trainer) from the config. Weights are fetched before anything trains;
    an unsupported precision is refused before anything at all."""
    check_precision(cfg.trainer.precision)
    check_parent(cfg)
    lightning.seed_everything(cfg.seed, workers=True, verbose=False)
    generator = instantiate_with_weights(cfg.student)  # first: a wrong parent fails before any download
    check_framing(generator, cfg.student.get("init_from"))
    compress = instantiate(cfg.compress) if cfg.get("compress") else None
    if isinstance(compress, CompressionStage):
        compress.check(generator)
    teacher = instantiate_with_weights(cfg.teacher) if cfg.get("teacher") else None
    datamodule = instantiate(cfg.data, teacher=teacher)
    check_targets(cfg, datamodule)
    module = instantiate(cfg.module, generator=generator, parent=parent_of(cfg, generator))
    if compress is not None:
        warm_start_discriminators(module, cfg.student.init_from)
    loggers: list[Logger] = instantiate_dict(cfg.get("logger"))
    callbacks: list[Callback] = instantiate_dict(cfg.get("callbacks")) + ([compress] if compress else [])
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks or None)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return datamodule, module, trainer


def check_targets(cfg: DictConfig, datamodule: Any) -> None:
    """Targets the mel sources cannot give: a recording for a mel made from text; a
    sample-aligned recording for the phase loss on flow mels (the flow re-synthesises the clip:
    it is aligned with the clip frame by frame, not sample by sample, so magnitude losses and
    the GAN are meaningful against it, and the phase derivative is not)."""
    sources = getattr(datamodule, "mel_sources", {"audio": 1.0})
    audio = float(cfg.module.target_weights.get("audio", 0.0))
    chosen = f"data.mel_source={'+'.join(sources)}"
    if audio and "text" in sources:
        raise ConfigError(
            f"module.target_weights.audio={audio:g} with {chosen}: a mel made from text has no recording; "
            "set module.target_weights.audio=0 (the teacher's waveform is its target)"
        )
    if audio and "flow" in sources and cfg.module.get("phase_loss_weight"):
        raise ConfigError(
            f"module.phase_loss_weight with module.target_weights.audio and {chosen}: a flow mel re-synthesises "
            "its clip, aligned frame by frame but not sample by sample, so the clip's phase is no target "
            "(set module.phase_loss_weight=0, or module.target_weights.audio=0)"
        )


def check_framing(generator: Any, source: str | None) -> None:
    """A student loaded from a file must take S3Gen's mels (80 bins) at S3Gen's hop (480)."""
    config = generator.config
    if (config.input_channels, config.hop_length) != (N_MELS, HOP_LENGTH):
        raise ConfigError(
            f"student.init_from={source}: a student for {config.input_channels} mels at hop "
            f"{config.hop_length}; S3Gen's mels are {N_MELS} bins at hop {HOP_LENGTH}. A Vocos of another "
            "framing warm-starts through a directory holding its pytorch_model.bin (its body is copied)."
        )


def check_parent(cfg: DictConfig) -> None:
    """A compression stage (``compress=prune|qat|lookahead``), or an experiment that goes on
    from a trained student (``continues_student``), starts from a trained student file."""
    parent = cfg.student.get("init_from")
    if parent and Path(str(parent)).expanduser().is_file():
        return
    if cfg.get("compress"):
        raise CompressionError(
            f"compress: a compression stage starts from a trained student; student.init_from={parent!r} is not a "
            "file. Point it at a training .ckpt (e.g. checkpoints/runs/finetune/<run>/checkpoints/last.ckpt) "
            "or an exported student .safetensors."
        )
    if cfg.get("continues_student"):
        raise ConfigError(
            "this experiment goes on from a trained student (continues_student: true), and "
            f"student.init_from={parent!r} is not a file. Point it at the last.ckpt of the run it continues "
            "(e.g. checkpoints/runs/cpu/<run>/checkpoints/last.ckpt)."
        )


def parent_of(cfg: DictConfig, generator: Any) -> Any:
    """The student ``parent`` (default: ``student.init_from``) names, when the losses take its
    output as a target (``module.target_weights.parent``, set by the compression stages). Without
    ``parent`` it is a frozen copy of ``generator`` as loaded from ``student.init_from``."""
    weights = cfg.module.get("target_weights") or {}
    if not weights.get("parent"):
        return None
    option, source = (
        ("parent", cfg.get("parent")) if cfg.get("parent") else ("student.init_from", cfg.student.get("init_from"))
    )
    if not source or not Path(str(source)).expanduser().is_file():
        raise ConfigError(
            f"module.target_weights.parent={weights['parent']} needs the parent student as a file: "
            f"{option}={source!r} is not one"
        )
    if option == "student.init_from":
        return copy.deepcopy(generator).eval().requires_grad_(False)

    return from_pretrained(str(source))


def warm_start_discriminators(module: Any, source: str) -> None:
    """A compression stage goes on with the discriminators its parent's run trained (when
    ``source`` is a training ``.ckpt`` holding them in the same shapes), not fresh ones."""
    if not module.discriminators or Path(source).suffix != ".ckpt":
        return
    import torch

    # mmap: only the discriminators' pages are read, not the whole (optimizer-laden) checkpoint again
    state = torch.load(Path(source).expanduser(), map_location="cpu", weights_only=True, mmap=True)
    state = state.get("state_dict", {})
    own = module.discriminators.state_dict()
    found = {k.removeprefix("discriminators."): v for k, v in state.items() if k.startswith("discriminators.")}
    usable = {k: v for k, v in found.items() if k in own and own[k].shape == v.shape}
    if usable:
        module.discriminators.load_state_dict(usable, strict=False)
    log.info("discriminators from %s: %d of %d tensors", source, len(usable), len(own))


def runs_folder(cfg: DictConfig) -> Path:
    """Where this experiment's runs live: ``checkpoints/runs/<run_group>/`` (the experiment's
    ``task_name``, suffixed by a compression stage)."""
    return Path(cfg.paths.log_dir) / "runs" / str(cfg.get("run_group") or cfg.task_name)


def resume_path(cfg: DictConfig) -> Path | None:
    """The checkpoint to resume from, if any.

    ``ckpt_path=last``: the newest ``last.ckpt`` of any run of this experiment. ``ckpt_path``
    unset: this run folder's own ``last.ckpt`` if it has one (a requeued SLURM job comes back
    to its folder), else a fresh start. Anything else: that file.
    """
    requested = cfg.get("ckpt_path")
    own = Path(cfg.paths.output_dir) / "checkpoints" / LAST
    if requested is None:
        return own if own.is_file() else None
    if str(requested) == "last":
        folder = runs_folder(cfg)
        found = [p for p in folder.rglob(LAST) if p.parent.name == "checkpoints"] if folder.is_dir() else []
        if not found:
            raise MissingFileError(
                f"ckpt_path=last: no run of '{folder.name}' has a checkpoint yet "
                f"({folder}/*/checkpoints/{LAST}); start one without ckpt_path"
            )
        return max(found, key=lambda p: p.stat().st_mtime_ns)
    path = Path(requested).expanduser()
    if is_onnx(path):
        raise OnnxArtifactError(
            f"ckpt_path={requested} is an ONNX student: a run resumes from its .ckpt (the run's "
            "checkpoints/last.ckpt); to start a new stage from a student use student.init_from=<.ckpt>"
        )
    if not path.is_file():
        raise MissingFileError(f"ckpt_path={requested}: no such checkpoint file")
    return path


def fit(cfg: DictConfig) -> dict[str, Any]:
    """Train, resuming where :func:`resume_path` says.

    Returns ``initial`` and ``final`` metrics (``initial``: a validation pass before the first
    update, with ``validate_first`` and a fresh start), ``resumed_from``, ``run_dir`` and
    ``last_checkpoint``.
    """
    if runs_folder(cfg).is_dir():
        remove_stale_temporaries(runs_folder(cfg))
    ckpt_path = resume_path(cfg)
    datamodule, module, trainer = build(cfg)
    initial: dict[str, float] = {}
    if ckpt_path is not None:
        log.info("resuming from %s", ckpt_path)
    elif cfg.get("validate_first"):
        initial = {k: float(v) for k, v in trainer.validate(module, datamodule=datamodule, verbose=False)[0].items()}
        log.info("step-0 validation: %s", _fmt(initial))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    finally:
        finish_runs(trainer.loggers)
    next_stage = next((c.next_stage for c in trainer.callbacks if isinstance(c, CompressionStage)), None)
    final = {k: float(v) for k, v in trainer.callback_metrics.items()}
    last = getattr(trainer.checkpoint_callback, "last_path", None)
    last = str(last) if last is not None and Path(last).is_file() else None
    run_dir = str(cfg.paths.output_dir)
    if trainer.is_global_zero:
        log.info("final metrics: %s", _fmt(final))
        log.info(
            "run folder: %s\nlast checkpoint: %s\nto go on: the same command with `ckpt_path=last` "
            "(and a larger trainer.max_steps)%s",
            run_dir,
            last,
            f"\nnext stage: {next_stage.format(last=last)}" if next_stage and last else "",
        )
    return {
        "initial": initial,
        "final": final,
        "resumed_from": None if ckpt_path is None else str(ckpt_path),
        "run_dir": run_dir,
        "last_checkpoint": last,
    }


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))
