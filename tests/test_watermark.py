"""Chatterbox's watermarker where pkg_resources is gone, and a clear error where it cannot be built."""

import importlib
import sys

import pytest

from train.evaluation import watermark
from train.evaluation.watermark import WatermarkUnavailableError, implicit_watermarker


def test_perth_builds_without_pkg_resources_and_none_is_left_behind():
    import perth

    had = "pkg_resources" in sys.modules
    w = implicit_watermarker()
    assert type(w).__name__ == "PerthImplicitWatermarker"
    assert ("pkg_resources" in sys.modules) == had  # the stand-in served perth's import only
    if perth.PerthImplicitWatermarker is None:  # this environment is the one the shim is for
        assert importlib.util.find_spec("pkg_resources") is None


def test_a_watermarker_that_cannot_be_built_is_a_clear_error(monkeypatch):
    import perth

    monkeypatch.setattr(perth, "PerthImplicitWatermarker", None)
    monkeypatch.setattr(watermark, "IMPLICIT", "perth.no_such_module")
    with pytest.raises(WatermarkUnavailableError, match=r"cannot build its implicit watermarker \(perth\.no_such"):
        implicit_watermarker()
    monkeypatch.setitem(sys.modules, "perth", None)  # not installed
    with pytest.raises(WatermarkUnavailableError, match="pip install resemble-perth"):
        implicit_watermarker()
