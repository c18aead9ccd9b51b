"""``train/publish.py``: a release folder -> a Hugging Face Hub model repo (and a W&B artifact).

One commit holds the whole folder (``upload_folder``): the Hub applies a commit only after every
LFS object of it has arrived, so an upload that fails half-way leaves the repo as it was. After
the commit the files are downloaded back from that exact revision and checked against the
sha256s of ``release.json``. The token is huggingface_hub's own (``HF_TOKEN`` or ``hf auth
login``): it is never a config key, never printed, never written anywhere by this script.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, constants, get_token, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError
from omegaconf import DictConfig

from vocos_distill.errors import ConfigError
from vocos_distill.files import sha256_file
from vocos_distill.hub import unreachable

log = logging.getLogger(__name__)
MANIFEST = "release.json"  # what train/export.py lists a release in (files, sha256, figures)


class PublishError(ConfigError, RuntimeError):
    """The release cannot be published: a bad folder, no token, offline, or the Hub refused."""


def read_release(folder: Path) -> dict[str, Any]:
    """``release.json`` of ``folder``, after checking that every file it lists is there, unchanged,
    and that nothing else is."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise PublishError(f"release={folder}: no {MANIFEST}; write the folder with train/export.py")
    manifest = json.loads(manifest_path.read_text())
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST}
    listed = set(manifest["files"])
    if present != listed:
        raise PublishError(
            f"release={folder} does not match its {MANIFEST}: missing {sorted(listed - present)[:5]}, "
            f"not listed {sorted(present - listed)[:5]}. Export it again."
        )
    changed = [name for name, entry in manifest["files"].items() if sha256_file(folder / name) != entry["sha256"]]
    if changed:
        raise PublishError(f"release={folder}: files changed since export (sha256 differs): {changed[:5]}")
    return manifest


def plan(folder: Path, manifest: dict[str, Any]) -> list[tuple[str, int]]:
    """(path in the repo, bytes) of every file the upload sends, release.json included."""
    files = [(name, entry["bytes"]) for name, entry in manifest["files"].items()]
    return sorted([*files, (MANIFEST, (folder / MANIFEST).stat().st_size)])


def commit_message(manifest: dict[str, Any]) -> str:
    source = manifest["source"]
    verdict = (manifest.get("evaluation") or {}).get("verdict", "not evaluated")
    checkpoint = Path(source["checkpoint"]).name
    return f"{manifest['name']}: from {checkpoint} (sha256 {source['sha256'][:12]}), verdict {verdict}"


def publish(cfg: DictConfig) -> dict[str, Any]:
    """Upload ``cfg.release`` to ``cfg.repo_id`` as one commit (or, with ``dry_run``, list what
    would go); check it back; log it to W&B. Returns what was done."""
    secrets = [key for key in cfg if "token" in str(key).lower()]
    if secrets:
        raise PublishError(
            f"{secrets[0]}= is not an option: the token comes from `hf auth login` or HF_TOKEN only, so that it is "
            "never in a command line, a log or a config dump"
        )
    folder = Path(cfg.release).expanduser()
    if not folder.is_dir():
        raise PublishError(f"release={folder}: no such folder (python train/export.py writes one)")
    manifest = read_release(folder)
    files = plan(folder, manifest)
    message = cfg.commit_message or commit_message(manifest)
    result: dict[str, Any] = {"repo_id": cfg.repo_id, "files": files, "commit_message": message}
    if cfg.dry_run:
        width = max(len(name) for name, _ in files)
        listing = "\n".join(f"  {name:<{width}}  {size:>12,} bytes" for name, size in files)
        total = sum(size for _, size in files)
        print(
            f"dry run: would upload {len(files)} files ({total:,} bytes) to {constants.ENDPOINT}/{cfg.repo_id} "
            f"(revision {cfg.revision or 'main'}{', tag ' + cfg.tag if cfg.tag else ''}) as one commit:\n"
            f"  {message}\n{listing}\nNothing was sent."
        )
        return {**result, "dry_run": True}

    if constants.HF_HUB_OFFLINE:
        raise PublishError(
            "HF_HUB_OFFLINE is set: publishing needs the Hub. Unset it, or pass dry_run=true to see what would be sent."
        )
    token = get_token()
    if not token:
        raise PublishError(
            "no Hugging Face token: run `hf auth login` or set HF_TOKEN (a token with write access). Nothing was sent."
        )
    why = unreachable(constants.ENDPOINT)
    if why:
        raise PublishError(f"the Hub at {constants.ENDPOINT} does not answer ({why}); nothing was sent.")

    api = HfApi(endpoint=constants.ENDPOINT, token=token)
    try:
        api.create_repo(cfg.repo_id, private=cfg.private, exist_ok=True)
        if cfg.revision:
            api.create_branch(cfg.repo_id, branch=cfg.revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=cfg.repo_id, folder_path=str(folder), revision=cfg.revision, commit_message=message
        )
        if cfg.tag:
            api.create_tag(cfg.repo_id, tag=cfg.tag, revision=info.oid, tag_message=message)
    except (HfHubHTTPError, RuntimeError, ValueError, OSError) as err:
        raise PublishError(
            f"publishing {folder} to {cfg.repo_id} failed: {_reasons(err)}. "
            "A commit is applied whole or not at all: the repo has no partial release."
        ) from err
    log.info("published %s to %s at commit %s", folder, cfg.repo_id, info.oid)
    result.update(commit=info.oid, url=str(info.commit_url))
    if cfg.verify:
        result["verified"] = verify_remote(cfg.repo_id, info.oid, token)
    if cfg.wandb.mode != "disabled":
        result["wandb"] = log_artifact(folder, manifest, cfg, result)
    return result


def _reasons(err: BaseException | None) -> str:
    """The first line of an error and of each error that caused it (the Hub's own message is
    often the cause of the client's)."""
    lines = []
    while err is not None:
        text = str(err).strip()
        lines.append(f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": "))
        err = err.__cause__
    return " <- ".join(lines)


def verify_remote(repo_id: str, revision: str, token: str) -> int:
    """Download ``release.json`` and every file it lists from ``revision``; check each sha256.
    Returns the number of files checked."""
    with tempfile.TemporaryDirectory() as cache:
        manifest_path = hf_hub_download(repo_id, MANIFEST, revision=revision, cache_dir=cache, token=token)
        manifest = json.loads(Path(manifest_path).read_text())
        bad = []
        for name, entry in manifest["files"].items():
            path = Path(hf_hub_download(repo_id, name, revision=revision, cache_dir=cache, token=token))
            if sha256_file(path) != entry["sha256"]:
                bad.append(name)
    if bad:
        raise PublishError(f"{repo_id}@{revision[:12]}: downloaded files differ from release.json: {bad[:5]}")
    log.info("checked %d files of %s@%s against release.json", len(manifest["files"]), repo_id, revision[:12])
    return len(manifest["files"])


def log_artifact(folder: Path, manifest: dict[str, Any], cfg: DictConfig, result: dict[str, Any]) -> dict[str, Any]:
    """The release as a W&B ``model`` artifact, its checks, verdict and Hub commit as metadata."""
    import wandb  # here: slow to import, and a dry run never needs it

    # W&B, only when the release is logged there: it is slow to import
    from train.utils.tracking import wandb_mode

    metadata = {
        "hub": {"repo_id": cfg.repo_id, "commit": result.get("commit")},
        "source": manifest["source"],
        "verdict": (manifest.get("evaluation") or {}).get("verdict", "not evaluated"),
        "metrics": (manifest.get("evaluation") or {}).get("metrics", {}),
        "verification": manifest.get("verification"),
        "config": manifest.get("config"),
        "git": manifest.get("git"),
    }
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", manifest["name"])
    run = wandb.init(
        project=cfg.wandb.project,
        job_type="publish",
        name=f"publish-{name}",
        dir=str(cfg.paths.output_dir),
        mode=wandb_mode(cfg.wandb.mode),
        settings=wandb.Settings(quiet=True),
    )
    try:
        artifact = wandb.Artifact(name, type="model", metadata=metadata)
        artifact.add_dir(str(folder))
        run.log_artifact(artifact, aliases=["latest", *([cfg.tag] if cfg.tag else [])])
    finally:
        run.finish()
    return {"artifact": name, "mode": run.settings.mode}
