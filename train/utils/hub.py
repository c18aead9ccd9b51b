"""Fetching weights from the Hugging Face Hub, with errors that say what to do instead."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError


class WeightsUnavailableError(RuntimeError):
    """Weights could not be found locally nor downloaded."""


def fetch_file(
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    hint: str = "",
) -> Path:
    """Download one file of a Hub repo (or take it from the Hugging Face cache).

    Honours ``HF_HOME`` / ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE``. Any failure becomes a
    :class:`WeightsUnavailableError` whose message ends with ``hint`` (the config option
    that points at a local file instead).
    """
    try:
        path = hf_hub_download(
            repo_id, filename, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, HFValidationError, OSError, ValueError) as err:
        raise WeightsUnavailableError(
            f"could not get '{filename}' from the Hugging Face Hub repo '{repo_id}' "
            f"(offline, not cached, or no such repo/file: {type(err).__name__}: {err}). {hint}".rstrip()
        ) from err
    return Path(path)
