"""``train/export.py``: a trained student -> a release folder, checked before it exists.

The folder (``checkpoints/release/<name>/`` by default)::

    config.yaml, pytorch_model.bin   vocos' own layout (Vocos.from_hparams / from_pretrained)
    model.safetensors                the same weights, with the student's build config
    model.onnx                       fp32, the iSTFT in the graph (train.student.graph)
    model.int8.onnx                  QAT students: the int8 runtime (train/quantize.py's numerics)
    conditional_decoder[_int8].onnx  conditional_decoder=true: S3Gen's flow + the student, for ONNX
                                     Chatterbox pipelines (train.release.conditional_decoder)
    README.md                        the model card (train.release.card)
    listen.html, listen/             the A/B listening page (train.release.listening_page)
    release.json                     sizes, sha256s, source checkpoint, git commit, verdict, checks

It is built in a temporary folder beside the destination and renamed into place only after
every check passed: ``vocos`` decodes exactly as the student, ``model.onnx`` within
``max_abs_diff``, ``model.int8.onnx`` at ``min_snr_db`` or better. A failed check, an existing
release (without ``overwrite=true``) or a report whose verdict is ``fail`` (without
``force=true``) leaves nothing behind.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import hydra.utils
import torch
from omegaconf import DictConfig
from safetensors.torch import save_file

import vocos_distill
from train.data.held_out import held_out_items
from train.evaluation import cost as benchmark
from train.evaluation.cost import CostSettings
from train.evaluation.report import read_report
from train.release import card, listening_page
from train.release.provenance import history, training_data
from train.release.publish import MANIFEST
from train.release.vocos_layout import feature_residual, load_vocos, write_vocos_layout
from train.student.graph import ISTFT_FORMS, Int8GraphError, export_onnx, write_int8_graph
from train.student.model import student_from_file
from train.student.quantized import is_prepared, strip
from train.utils.instantiate import load_optional_teacher
from train.utils.tables import table
from vocos_distill.config import StudentConfig
from vocos_distill.errors import ConfigError
from vocos_distill.files import sha256_file, temporary_path
from vocos_distill.int8_check import cpu_info, describe_cpu
from vocos_distill.onnx import OnnxVocoder, session
from vocos_distill.student import VocosStudent

log = logging.getLogger(__name__)
FILE_NOTES = {
    "config.yaml": "vocos `from_hparams` config (feature extractor, backbone, head) and the expected mel",
    "pytorch_model.bin": "fp32 weights in vocos' layout, S3Gen's filterbank in the feature extractor",
    "model.safetensors": "the same fp32 weights, with the build config in the metadata",
    "model.onnx": "fp32 ONNX, mel -> wav, iSTFT in the graph",
    "model.int8.onnx": "int8 ONNX (Linear layers), mel -> wav, iSTFT in the graph",
    "conditional_decoder.onnx": "for ONNX Chatterbox pipelines: S3Gen's flow + this model, tokens -> waveform",
    "conditional_decoder_int8.onnx": "the same with the int8 student inside (the flow fp32)",
    "README.md": "this card",
    "listen.html": "A/B listening page (with `listen/`)",
    "release.json": "sizes and sha256 of every file, source, commit, verdict, checks",
}


class ReleaseError(ConfigError, RuntimeError):
    """A release that must not be written: a failed check, an existing folder, a failing verdict."""


def git_commit(root: Path) -> dict[str, Any]:
    """The commit the code was at, and whether tracked files had changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": None}


def check_report(report_path: Path, checkpoint: Path, checkpoint_sha: str, force: bool) -> dict[str, Any]:
    """The evaluation report, if it evaluates ``checkpoint`` (or an ONNX student made from it)
    and its verdict is not ``fail`` (unless ``force``)."""
    report = read_report(report_path)
    evaluated = report["checkpoint"]
    made_from = None
    if evaluated["sha256"] != checkpoint_sha and Path(evaluated["path"]).suffix == ".onnx":
        try:
            made_from = OnnxVocoder(evaluated["path"], check=False).metadata.get("source_sha256")  # metadata only
        except (OSError, ConfigError):
            made_from = None
    if checkpoint_sha not in (evaluated["sha256"], made_from):
        raise ReleaseError(
            f"report={report_path} evaluates {evaluated['path']} (sha256 {evaluated['sha256'][:12]}), not "
            f"checkpoint={checkpoint} (sha256 {checkpoint_sha[:12]}) nor a student made from it. Evaluate this "
            "checkpoint (python train/evaluate.py checkpoint=...) and pass that report."
        )
    if report["verdict"] == "fail" and not force:
        failed = [g["name"] for g in report["gates"] if g["status"] == "fail"]
        raise ReleaseError(
            f"report={report_path}: the evaluation's verdict is 'fail' (gates: {', '.join(failed)}); nothing exported. "
            "Pass force=true to release it anyway (the card will say so)."
        )
    return report


def time_istft_forms(plain: torch.nn.Module, mel: torch.Tensor, folder: Path, repeats: int = 5) -> list[dict]:
    """Both iSTFT formulations of the fp32 student ``plain`` exported and timed under ONNX Runtime
    on the same mel."""
    with torch.no_grad():
        reference = plain(mel)
    rows = []
    for form in ISTFT_FORMS:
        path = export_onnx(plain, folder / f"{form}.onnx", istft=form)
        row: dict[str, Any] = {"istft": form, "bytes": path.stat().st_size}
        for threads in (1, os.cpu_count() or 1):
            runner = session(path, threads)
            feed = {"mel": mel.numpy()}
            (out,) = runner.run(None, feed)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                runner.run(None, feed)
                times.append(time.perf_counter() - start)
            row[f"ms_{threads}_thread{'s' if threads > 1 else ''}"] = 1000 * sorted(times)[len(times) // 2]
        row["max_abs_diff"] = float((torch.from_numpy(out) - reference).abs().max())
        rows.append(row)
    return rows


def export(cfg: DictConfig) -> dict[str, Any]:
    """Write the release of ``cfg.checkpoint``; returns its manifest (``release.json``)."""
    checkpoint = Path(cfg.checkpoint).expanduser()
    student = student_from_file(checkpoint, option="checkpoint").eval().requires_grad_(False)
    plain = strip(student).eval()
    int8 = is_prepared(student)
    checkpoint_sha = sha256_file(checkpoint)
    report = check_report(Path(cfg.report).expanduser(), checkpoint, checkpoint_sha, cfg.force) if cfg.report else None
    if report is None:
        log.warning("no report= given: the card will have no quality figures and release.json no verdict")
    name = cfg.name or _default_name(checkpoint, plain.config, int8)
    out = Path(cfg.out).expanduser() if cfg.out else Path(cfg.paths.release_dir) / name
    if out.exists() and not cfg.overwrite:
        raise ReleaseError(f"{out} already exists; nothing written. Pass overwrite=true to replace it, or out=...")

    if cfg.conditional_decoder:  # its files and settings, before the long work
        from train.release.conditional_decoder import preflight  # here: it imports Chatterbox's modules

        preflight(cfg, plain.config)
    teacher, _ = load_optional_teacher(cfg.get("teacher"), required=False)
    items = held_out_items(cfg.data, cfg.max_utterances, cfg.get("max_frames"), teacher=teacher)
    if not items:
        raise ReleaseError(f"no held-out utterances in {cfg.data.get('audio_dirs')}: nothing to check the export on")

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_path(out)
    staging.mkdir()
    try:
        manifest = _build(cfg, staging, checkpoint, checkpoint_sha, student, plain, int8, report, name, items)
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    listing = table(["file", "bytes"], [[k, f"{v['bytes']:,}"] for k, v in manifest["files"].items()])
    log.info("release: %s\n%s", out, listing)
    return {**manifest, "folder": str(out)}


def _default_name(checkpoint: Path, config: StudentConfig, int8: bool) -> str:
    # a run's checkpoint: runs/<run group>/<run>/checkpoints/<file>
    group = checkpoint.parents[2].name if checkpoint.parent.name == "checkpoints" else checkpoint.stem
    shape = f"{config.dim}x{config.intermediate_dim}x{config.num_layers}"
    return f"vocos-s3gen-{group}{'' if shape in group else '-' + shape}{'-int8' if int8 else ''}"


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename the finished folder to ``out``; an old release there is moved aside first and
    removed only once the new one is in place."""
    old = None
    if out.exists():
        old = temporary_path(out)
        out.rename(old)
    try:
        staging.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _build(
    cfg: DictConfig,
    folder: Path,
    checkpoint: Path,
    checkpoint_sha: str,
    student: torch.nn.Module,
    plain: torch.nn.Module,
    int8: bool,
    report: dict[str, Any] | None,
    name: str,
    items: list[tuple[str, dict[str, torch.Tensor]]],
) -> dict[str, Any]:
    mels = [item["mel"].unsqueeze(0) for _, item in items]
    write_vocos_layout(plain, folder)
    save_file(
        {k: v.contiguous() for k, v in plain.state_dict().items()},
        str(folder / "model.safetensors"),
        metadata={"config": json.dumps(plain.config.to_dict()), "format": "pt"},
    )
    source = {"source_sha256": checkpoint_sha, "source": checkpoint.name}
    export_onnx(plain, folder / "model.onnx", istft=cfg.istft, metadata=source)
    int8_snrs = None
    if int8:
        try:
            int8_snrs = write_int8_graph(student, folder / "model.int8.onnx", mels, cfg.min_snr_db, cfg.istft, source)
        except Int8GraphError as err:
            raise ReleaseError(
                f"model.int8.onnx reproduces the QAT model at only {err.worst_db:.1f} dB SNR "
                f"(min_snr_db={cfg.min_snr_db}); nothing written"
            ) from None

    decoders = None
    if cfg.conditional_decoder:
        from train.release.conditional_decoder import build_in_release  # chatterbox is imported only then

        decoders = build_in_release(cfg, folder, student, plain, int8)

    vocos = load_vocos(folder)
    fp32 = OnnxVocoder(folder / "model.onnx")
    quantized = OnnxVocoder(folder / "model.int8.onnx") if int8 else None
    verification = _verify(cfg, plain, vocos, fp32, quantized, int8_snrs, mels)
    residual = feature_residual(vocos, [(item["audio"], item["mel"]) for _, item in items if "audio" in item])

    cost = None
    if cfg.cost:
        labels = {
            "model.safetensors": "model.safetensors (PyTorch fp32)",
            "model.onnx": "model.onnx (ONNX Runtime fp32)",
            **({"model.int8.onnx": "model.int8.onnx (ONNX Runtime int8)"} if int8 else {}),
        }
        students = [folder / n for n in labels]
        settings = hydra.utils.instantiate(cfg.cost, _convert_="all")
        rows = benchmark.run(settings, students=students)
        for row, label in zip(rows[1:], labels.values(), strict=True):
            row["name"] = label
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        machine = f"{describe_cpu()}, {os.cpu_count()} cores, load average {load:.1f}"
        cost = {
            "rows": rows,
            "seconds": settings.seconds,
            "repeats": settings.repeats,
            "chunk_frames": list(settings.chunk_frames),
            "machine": machine,
        }

    istft = None
    if cfg.compare_istft:
        seconds = (cfg.cost or {}).get("seconds", CostSettings.seconds)
        timing = torch.cat(mels, dim=-1).repeat(1, 1, int(seconds * 50) // sum(m.shape[-1] for m in mels) + 1)
        with tempfile.TemporaryDirectory() as tmp:
            istft = time_istft_forms(plain, timing[..., : int(seconds * 50)], Path(tmp))
        print(f"iSTFT formulations, fp32 graph under ONNX Runtime, {seconds:g} s of validation mels (median of 5):")
        cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()] for row in istft]
        print(table(list(istft[0]), cells))

    wavs = []
    with torch.inference_mode():
        for utterance, item in items[: cfg.listen_utterances]:
            systems = {k: item[k] for k in ("audio", "teacher") if k in item}
            mel = item["mel"].unsqueeze(0)
            systems["this model (fp32)"] = plain(mel)[0]
            if int8:
                systems["this model (int8)"] = quantized(mel)[0]
            wavs.append((utterance, systems))
    listening_page.write_listening_page(
        folder, wavs, f"{name}: listening test", "<p>Held-out speech, not trained on.</p>"
    )

    lines, bases, runs = history(checkpoint)
    facts = {
        "name": name,
        "config": plain.config.to_dict(),
        "parameters": sum(p.numel() for p in plain.parameters()),
        "lookahead_frames": plain.receptive_field.right,
        "report": report,
        "cost": cost,
        "int8": int8,
        "license": cfg.card.license,
        "base_models": bases,
        "history": lines + ([f"quantised to int8 for ONNX Runtime: {quantized.quantization}"] if int8 else []),
        "licences": list(cfg.card.licences),
        "training_data": training_data(runs, Path(cfg.paths.root_dir)),
        "limitations": list(card.limitations(report, int8)) + list(cfg.card.limitations or []),
        "verification": verification,
        "feature_residual": residual,
        "conditional_decoder": decoders,
        "git": git_commit(Path(cfg.paths.root_dir)),
        "runtime_version": vocos_distill.__version__,
        "runtime_install": vocos_distill.INSTALL,
        "repo_hint": cfg.card.repo_id or f"<namespace>/{name}",
        "files": [(p.name, p.stat().st_size) for p in sorted(folder.iterdir()) if p.is_file()],
        "file_notes": FILE_NOTES,
    }
    card.model_card(facts).save(folder / "README.md")

    files = {
        str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    manifest = {
        "name": name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "files": files,
        "source": {"checkpoint": str(checkpoint), "sha256": checkpoint_sha},
        "git": facts["git"],
        "runtime": {"package": "vocos-distill", "version": vocos_distill.__version__, "install": vocos_distill.INSTALL},
        "machine": {**cpu_info(), "description": describe_cpu()},
        "config": plain.config.to_dict(),
        "int8": int8,
        "evaluation": None
        if report is None
        else {
            "report": str(cfg.report),
            "sha256": sha256_file(Path(cfg.report)),
            "verdict": report["verdict"],
            "evaluated": Path(report["checkpoint"]["path"]).name,
            "utterances": report["data"]["utterances"],
            "metrics": {
                group: {metric: stat["mean"] for metric, stat in stats.items() if stat.get("mean") is not None}
                for group, stats in report["summary"].items()
            },
        },
        "verification": verification,
        "feature_residual": residual,
        "cost": cost,
        "istft": istft,
        "conditional_decoder": decoders,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def _verify(
    cfg: DictConfig,
    plain: torch.nn.Module,
    vocos: torch.nn.Module,
    fp32: OnnxVocoder,
    quantized: OnnxVocoder | None,
    snrs: list[float] | None,
    mels: list[torch.Tensor],
) -> dict[str, Any]:
    """Every exported form against the PyTorch student, on the held-out mels; raises on a miss
    (the int8 graph's SNRs come from its writer, :func:`train.student.graph.write_int8_graph`)."""

    vocos_diff, onnx_diff = 0.0, 0.0
    # vocos' own decode, or for a head with the amplitude prior (which needs the mel too) vocos'
    # modules as vocos_distill.from_pretrained runs them
    decode = VocosStudent(vocos.backbone, vocos.head) if plain.config.amplitude_prior else vocos.decode
    with torch.inference_mode():
        for mel in mels:
            reference = plain(mel)
            vocos_diff = max(vocos_diff, float((decode(mel) - reference).abs().max()))
            onnx_diff = max(onnx_diff, float((fp32(mel) - reference).abs().max()))
    result: dict[str, Any] = {
        "utterances": len(mels),
        "max_frames": max(m.shape[-1] for m in mels),
        "vocos_max_abs": vocos_diff,
        "onnx_max_abs": onnx_diff,
        "onnx_limit": cfg.max_abs_diff,
    }
    log.info("export checks: vocos decode max |diff| %.2g; model.onnx max |diff| %.2g", vocos_diff, onnx_diff)
    if vocos_diff > cfg.max_abs_diff:
        raise ReleaseError(f"vocos' decode of the exported weights differs from the student by {vocos_diff:.3g}")
    if onnx_diff > cfg.max_abs_diff:
        raise ReleaseError(
            f"model.onnx differs from the PyTorch student by up to {onnx_diff:.3g} (max_abs_diff={cfg.max_abs_diff}); "
            "nothing written"
        )
    if quantized is not None and snrs:
        result.update(
            int8_snr_min_db=min(snrs),
            int8_snr_mean_db=sum(snrs) / len(snrs),
            int8_limit_db=cfg.min_snr_db,
            int8_scheme=quantized.metadata.get("int8_scheme"),
            cpu=describe_cpu(),
        )
        log.info("export checks: model.int8.onnx SNR vs the QAT model: min %.1f dB", min(snrs))
    return result
