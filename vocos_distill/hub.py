"""Fetching weights from the Hugging Face Hub, with errors that say what to do instead.

Before the first download a process asks the Hub once, with a short timeout, whether it
answers at all. When it does not (no network, DNS failure, a firewall), downloads use the
local Hugging Face cache only: huggingface_hub would otherwise retry each file five times
with back-off (about 25 s) before giving the same answer.
"""

from __future__ import annotations

import functools
import logging
import urllib.error
import urllib.request
from pathlib import Path

from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

from vocos_distill.errors import ConfigError

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 3.0


class WeightsUnavailableError(ConfigError, RuntimeError):
    """Weights could not be found locally nor downloaded."""


@functools.cache
def unreachable(endpoint: str) -> str | None:
    """Why the Hub at ``endpoint`` does not answer, or ``None`` when it does (any HTTP status
    counts as an answer). Asked once per process and endpoint."""
    request = urllib.request.Request(endpoint.rstrip("/") + "/api/models?limit=1", method="HEAD")
    try:
        urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return f"{type(reason).__name__}: {reason}" if not isinstance(reason, str) else reason
    return None


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

    Honours ``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE``. Any failure
    becomes a :class:`WeightsUnavailableError` whose message ends with ``hint`` (the config
    option that points at a local file instead).
    """
    why_offline = None
    if not local_files_only and not constants.HF_HUB_OFFLINE:
        why_offline = unreachable(constants.ENDPOINT)
        if why_offline:
            # offline for the rest of the process, for huggingface_hub too (it would otherwise
            # still ask the Hub for its own registries, with cache-only downloads as well)
            constants.HF_HUB_OFFLINE = True
            log.info(
                "the Hugging Face Hub at %s does not answer (%s): local cache only", constants.ENDPOINT, why_offline
            )
    try:
        path = hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only or why_offline is not None,
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, HFValidationError, OSError, ValueError) as err:
        if why_offline:
            cause = f"the Hub at {constants.ENDPOINT} does not answer ({why_offline}) and it is not in the local cache"
        else:
            cause = f"offline, not cached, or no such repo/file: {type(err).__name__}: {err}"
        raise WeightsUnavailableError(
            f"could not get '{filename}' from the Hugging Face Hub repo '{repo_id}' ({cause}). {hint}".rstrip()
        ) from err
    return Path(path)
