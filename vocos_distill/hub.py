"""Fetching weights from the Hugging Face Hub, with errors that say what to do instead.

Before a download this module asks the Hub, with a short timeout, whether it answers at all.
When it does not (no network, DNS failure, a firewall), this module's own downloads use the
local Hugging Face cache only for the next :data:`UNREACHABLE_TTL_S` seconds: huggingface_hub
would otherwise retry each file five times with back-off (about 25 s) before giving the same
answer. That answer is this module's alone: huggingface_hub's settings (``HF_HUB_OFFLINE``
among them) belong to the process, and Chatterbox's own downloads go on as they would have.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

from vocos_distill.errors import ConfigError

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 3.0
UNREACHABLE_TTL_S = 60.0  # how long a Hub that did not answer is taken to be away before it is asked again
_unreachable: dict[str, tuple[float, str]] = {}  # endpoint -> (when it did not answer, why)
_lock = threading.Lock()


class WeightsUnavailableError(ConfigError, RuntimeError):
    """Weights could not be found locally nor downloaded."""


def unreachable(endpoint: str) -> str | None:
    """Why the Hub at ``endpoint`` does not answer, or ``None`` when it does (any HTTP status
    counts as an answer). A Hub that did not answer is not asked again for
    :data:`UNREACHABLE_TTL_S` seconds; one that answered is asked each time (a HEAD request)."""
    with _lock:
        known = _unreachable.get(endpoint)
        if known is not None and time.monotonic() - known[0] < UNREACHABLE_TTL_S:
            return known[1]
    request = urllib.request.Request(endpoint.rstrip("/") + "/api/models?limit=1", method="HEAD")
    why = None
    try:
        urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        pass
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        why = f"{type(reason).__name__}: {reason}" if not isinstance(reason, str) else reason
    with _lock:
        if why is None:
            _unreachable.pop(endpoint, None)
        else:
            _unreachable[endpoint] = (time.monotonic(), why)
    return why


def forget_unreachable() -> None:
    """Ask the Hub again at the next download, whatever it answered before."""
    with _lock:
        _unreachable.clear()


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
        if why_offline:  # this download alone from the cache: huggingface_hub's own settings are the process's
            log.info(
                "the Hugging Face Hub at %s does not answer (%s): '%s' from the local cache only",
                constants.ENDPOINT,
                why_offline,
                filename,
            )
    try:
        if why_offline is not None:  # the cache alone, read directly: not even huggingface_hub's own requests
            path = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
            if not isinstance(path, str):
                raise LocalEntryNotFoundError(f"'{filename}' of '{repo_id}' is not in the local cache")
        else:
            path = hf_hub_download(
                repo_id, filename, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
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
