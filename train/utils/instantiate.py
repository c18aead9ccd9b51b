"""Turning config nodes into objects, with errors that name the option at fault."""

from __future__ import annotations

import logging
from typing import Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from vocos_distill.errors import ConfigError
from vocos_distill.hub import WeightsUnavailableError

log = logging.getLogger(__name__)

OFFLINE_HINT = (
    "Without the Hugging Face Hub: `teacher.checkpoint=/path/to/s3gen.safetensors` gives a local teacher, "
    "`student.init_from=null` starts the student from scratch, or `experiment=finetune` trains on "
    "ground-truth audio with no teacher at all."
)


def instantiate(node: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, but a :class:`ConfigError` raised inside comes out as
    itself (its message names the option), not wrapped in Hydra's exception."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, ConfigError):
            raise err.__cause__ from None
        raise


def instantiate_dict(nodes: DictConfig | None) -> list[Any]:
    """Instantiate every non-null entry of a name -> config mapping (loggers, callbacks)."""
    return [instantiate(node) for node in (nodes or {}).values() if node is not None]


def instantiate_with_weights(node: DictConfig) -> Any:
    """Instantiate a node that downloads weights; unavailable weights end the run with the ways out."""
    try:
        return instantiate(node)
    except WeightsUnavailableError as err:
        raise WeightsUnavailableError(f"{err}\n{OFFLINE_HINT}") from None


def load_optional_teacher(node: DictConfig | None, required: bool) -> tuple[Any, dict[str, Any]]:
    """The teacher, or ``None`` with the reason. Weights that cannot be fetched (offline, no
    access) end the run only with ``require_teacher=true``; a bad local file always does."""
    info: dict[str, Any] = {"status": "disabled", "reason": "no teacher configured (teacher=null)", "weights_id": None}
    if not node:
        return None, info
    try:
        teacher = instantiate_with_weights(node)
    except WeightsUnavailableError as err:
        if required:
            raise
        reason = str(err).splitlines()[0]
        log.warning("evaluating without the teacher: %s", reason)
        return None, {**info, "status": "unavailable", "reason": reason}
    return teacher, {"status": "loaded", "reason": None, "weights_id": getattr(teacher, "weights_id", None)}
