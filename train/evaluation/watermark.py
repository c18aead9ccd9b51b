"""Chatterbox's watermark: does it survive on a student's output?

Chatterbox marks every waveform it returns with ``resemble-perth``'s implicit watermarker
(``ChatterboxTTS.generate``: ``self.watermarker.apply_watermark(wav, sample_rate=self.sr)``),
whose network weights ship inside the wheel. ``perth`` 1.0.1 finds them with
``pkg_resources.resource_filename``; setuptools 81 and later no longer ship ``pkg_resources``,
and ``perth`` then sets ``PerthImplicitWatermarker`` to ``None`` without a word.
:func:`implicit_watermarker` supplies that one function for the import when it is missing, and
otherwise fails naming what is missing.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.resources
import importlib.util
import sys
import types
from collections.abc import Iterator
from typing import Any

import numpy as np

from vocos_distill.errors import ConfigError

IMPLICIT = "perth.perth_net.perth_net_implicit.perth_watermarker"


class WatermarkUnavailableError(ConfigError, ImportError):
    """Chatterbox's watermarker cannot be built here."""


def _resource_filename(package: str, resource: str) -> str:
    return str(importlib.resources.files(package) / resource)


@contextlib.contextmanager
def perth_for_chatterbox() -> Iterator[None]:
    """Chatterbox's TTS classes build ``perth.PerthImplicitWatermarker()`` when constructed; where
    perth could not define it (no ``pkg_resources``), it stands for :func:`implicit_watermarker`
    while inside, so that ``from_local`` works here as in Chatterbox's own environment."""
    import perth

    if perth.PerthImplicitWatermarker is not None:
        yield
        return
    made = implicit_watermarker()
    perth.PerthImplicitWatermarker = lambda *args, **kwargs: made
    try:
        yield
    finally:
        perth.PerthImplicitWatermarker = None


def implicit_watermarker(device: str = "cpu") -> Any:
    """``perth.PerthImplicitWatermarker`` on ``device``, as Chatterbox builds it, whether or not
    this environment has ``pkg_resources``."""
    try:
        import perth
    except ImportError as err:
        raise WatermarkUnavailableError(
            f"the watermark check needs resemble-perth (Chatterbox's watermarker): {err}. "
            "Install it with `pip install resemble-perth==1.0.1`"
        ) from err
    cls = perth.PerthImplicitWatermarker
    if cls is None:
        shim = importlib.util.find_spec("pkg_resources") is None
        if shim:  # only for perth's import: nothing else is shown a stand-in pkg_resources
            sys.modules["pkg_resources"] = types.SimpleNamespace(resource_filename=_resource_filename)  # type: ignore[assignment]
        try:
            cls = importlib.import_module(IMPLICIT).PerthImplicitWatermarker
        except Exception as err:
            raise WatermarkUnavailableError(
                f"resemble-perth {getattr(perth, '__version__', '?')} cannot build its implicit watermarker "
                f"({IMPLICIT}: {type(err).__name__}: {err})"
            ) from err
        finally:
            if shim:
                sys.modules.pop("pkg_resources", None)
    return cls(device=device)


def watermark_survives(watermarker: Any, wav: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """Chatterbox's step on ``wav``: mark it, then read the mark back. Returns (the mark's
    confidence in the marked audio, in the unmarked audio): 1 and 0 when it survives."""
    wav = np.asarray(wav, dtype=np.float32)
    marked = watermarker.apply_watermark(wav, sample_rate=sample_rate)
    return (
        float(watermarker.get_watermark(marked, sample_rate=sample_rate, round=False)),
        float(watermarker.get_watermark(wav, sample_rate=sample_rate, round=False)),
    )
