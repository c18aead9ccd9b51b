"""How a released student was made, read from the run configs up its ``student.init_from`` chain:
each run's stage, steps, targets, mels and teacher (:func:`history`), and the data it was trained
on with the licence notes found beside it (:func:`training_data`). The model card
(:mod:`train.release.card`) prints both; ``data.mel_source`` is read by the data's own parser
(:func:`train.data.sources.parse_sources`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from train.data.sources import parse_sources


def run_config(checkpoint: Path) -> dict[str, Any] | None:
    """The Hydra config of the run that wrote ``checkpoint`` (``<run>/.hydra/config.yaml``), if
    there, with the interpolations of the parts the card reads resolved (``${paths.data_dir}``,
    ``${task_name}``; Hydra saves them unresolved)."""
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        path = folder / ".hydra" / "config.yaml"
        if path.is_file():
            config = OmegaConf.create(yaml.safe_load(path.read_text()))
            return {key: _resolved(config, key) for key in config}
    return None


def _resolved(config: DictConfig, key: str) -> Any:
    """``config[key]`` as plain data with its interpolations resolved, or left as written when one
    can only be resolved inside the run (``${hydra:...}``)."""
    node = config._get_node(key)
    try:
        return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else config[key]
    except Exception:
        return OmegaConf.to_container(node) if OmegaConf.is_config(node) else node._value()


def describe_run(config: Mapping[str, Any]) -> str:
    """One run of a student's history, for the card: what it did, its steps, targets, mels and teacher."""
    compress = (config.get("compress") or {}).get("_target_", "")
    stage = {"train.compress.pruning.Pruning": "structured pruning", "train.compress.qat.QuantizationAware": "QAT"}
    what = stage.get(compress, "training")
    steps = (config.get("trainer") or {}).get("max_steps")
    targets = ", ".join(
        f"{k} {v:g}" for k, v in ((config.get("module") or {}).get("target_weights") or {}).items() if v
    )
    detail = ""
    if what == "structured pruning":
        c = config["compress"]
        detail = (
            f" to dim {c.get('dim')}, intermediate {c.get('intermediate_dim')}, {c.get('num_layers')} blocks "
            f"({c.get('importance')} importance, cuts at steps {c.get('at_steps')})"
        )
    teacher = (config.get("teacher") or {}).get("checkpoint") if config.get("teacher") else None
    group = str(config.get("run_group") or config.get("task_name")).replace(
        "${task_name}", str(config.get("task_name"))
    )
    mels = describe_mel_source(mel_sources(config.get("data") or {}))
    return f"{what}{detail}: run group `{group}`, {steps} steps, targets: {targets or 'n/a'}, mels: {mels}" + (
        f", teacher weights `{teacher}`" if teacher else ", no teacher"
    )


def history(checkpoint: Path, depth: int = 6) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """How the student was made, from the run configs up its ``student.init_from`` chain:
    (lines for the card, base models on the Hub, each run's data sources)."""
    lines, bases, runs = [], [], []
    current: Path | None = checkpoint
    while current is not None and depth > 0:
        depth -= 1
        config = run_config(current)
        if config is None:
            lines.append(f"`{current.name}`: no run config beside it; its history is not recorded.")
            break
        runs.append(config)
        student = config.get("student") or {}
        lines.append(describe_run(config))
        init = student.get("init_from")
        if not init:
            lines.append("initialised from scratch.")
            break
        if Path(init).exists():
            current = Path(init)
            continue
        if str(init).startswith((".", "/", "~")) or Path(init).suffix:
            lines.append(f"started from `{init}`, no longer on this machine: the history before it is not recorded.")
            break
        bases.append(init)
        lines.append(f"warm-started from `{init}` (the ConvNeXt body).")
        break
    return lines[::-1], bases, runs


MEL_SOURCES = {
    "audio": "S3Gen's mel of each recording",
    "flow": "S3Gen's flow mel teacher-forced from each recording (what mel2wav is fed in Chatterbox)",
    "text": "S3Gen's flow mel of T3's tokens for lines of text",
}


def mel_sources(data: Mapping[str, Any]) -> dict[str, float]:
    """A run config's ``data.mel_source`` as :func:`~train.data.sources.parse_sources` reads it
    (a config from before the option: the mels of recordings)."""
    return parse_sources(data.get("mel_source") or "audio")


def describe_mel_source(mel_source: str | Mapping[str, float]) -> str:
    """``audio+flow`` (or ``audio:1+flow:3``) in words, for the card: each source, and its share of
    the training draws when the shares differ."""
    shares = parse_sources(mel_source)
    equal = len(set(shares.values())) == 1
    return "; ".join(f"{MEL_SOURCES[name]}{'' if equal else f' ({100 * share:.0f} % of draws)'}"
                     for name, share in shares.items())  # fmt: skip


def training_data(runs: list[dict[str, Any]], root: Path) -> str:
    """The data of every run in the chain, with the licence notes found beside it."""
    sources: list[str] = []
    for config in runs:
        data = config.get("data") or {}
        text = (data.get("flow") or {}).get("text_file") if "text" in mel_sources(data) else None
        for folder in [*(data.get("audio_dirs") or []), data.get("mel_dir"), data.get("paired_audio_dir"), text]:
            if folder and str(folder) not in sources:
                sources.append(str(folder))
    if not sources:
        return "Not recorded (no run config beside the checkpoint)."
    parts = []
    for source in sources:
        folder = Path(source) if Path(source).is_absolute() else root / source
        folder = folder.parent if folder.is_file() else folder  # a text file: the notes beside it
        notes = [folder / n for n in ("ATTRIBUTION.md", "LICENSE", "LICENSE.md", "README.md")]
        found = next((n for n in notes if n.is_file()), None)
        shown = os.path.relpath(folder, root) if folder.is_relative_to(root) else source
        if found:
            text = found.read_text(encoding="utf-8").strip().splitlines()
            body = "\n".join(line for line in text if not line.startswith("# "))
            parts.append(f"`{shown}` ({found.name}):\n\n{body.strip()}")
        else:
            parts.append(f"`{shown}`: no licence note found beside it; check its terms before using this model.")
    return "\n\n".join(parts)
