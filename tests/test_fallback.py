"""The runtime's one rule for what goes wrong (issue 37): a caller's mistake raises whatever
``fallback`` says; what the environment gets wrong (missing, offline, corrupt, made for another
mel, int8 wrong here) falls through to the next form that works (``auto``: int8 -> fp32 ONNX ->
PyTorch -> Chatterbox's HiFT) with one warning that names the file or setting and the form now
in place; and nothing outside the package's own state changes.

These run on a stand-in for S3Gen (what :func:`use_student` needs of one: ``.mel2wav`` and a
parameter's device), so they need no Chatterbox; ``tests/test_chatterbox.py`` runs the same
drop-in through Chatterbox's own call site.
"""

from __future__ import annotations

import logging
import random
import socket
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import write_release
from hub_server import HubServer
from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError
from torch import nn

import vocos_distill
from vocos_distill import hub
from vocos_distill.chatterbox import ChatterboxVocoder, use_student

FILES = ("config.yaml", "pytorch_model.bin", "model.onnx", "model.int8.onnx")


class StandInS3Gen(nn.Module):
    """What :func:`use_student` asks of an S3Gen: a vocoder module at ``mel2wav``."""

    def __init__(self) -> None:
        super().__init__()
        self.mel2wav = nn.Conv1d(80, 480, 1)  # "HiFT"


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return write_release(tmp_path_factory.mktemp("release") / "vocos-s3gen-tiny")


@pytest.fixture
def copy_of(release, tmp_path):
    def make(name: str = "copy") -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for file in release.iterdir():
            (folder / file.name).write_bytes(file.read_bytes())
        return folder

    return make


@pytest.fixture
def model():
    return StandInS3Gen()


def process_state() -> dict:
    """What a library must leave as it found it: Hugging Face's offline flag, every RNG, the thread
    counts, logging's configuration, warning filters, the environment, torch's global modes."""
    loggers = {
        name: (lg.level, list(lg.handlers), lg.propagate, lg.disabled)
        for name, lg in logging.Logger.manager.loggerDict.items()
        if isinstance(lg, logging.Logger)
    }
    return {
        "hf_offline": constants.HF_HUB_OFFLINE,
        "hf_is_offline": constants.is_offline_mode(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "python_rng": random.getstate(),
        "threads": (torch.get_num_threads(), torch.get_num_interop_threads()),
        "root_logging": (logging.root.level, list(logging.root.handlers)),
        "loggers": loggers,
        "warning_filters": list(warnings.filters),
        "environ": dict(__import__("os").environ),
        "torch_modes": (
            torch.get_default_dtype(),
            torch.is_grad_enabled(),
            torch.are_deterministic_algorithms_enabled(),
            torch.is_inference_mode_enabled(),
        ),
    }


def assert_unchanged(before: dict, after: dict) -> None:
    for key in before:
        if isinstance(before[key], torch.Tensor):
            assert torch.equal(before[key], after[key]), f"{key} changed"
        elif isinstance(before[key], np.ndarray):
            assert np.array_equal(before[key], after[key]), f"{key} changed"
        elif key == "loggers":  # a logger created on first use is no change; an existing one reconfigured is
            changed = {n for n, v in before[key].items() if after[key].get(n) != v}
            assert not changed, f"loggers reconfigured: {sorted(changed)}"
        else:
            assert before[key] == after[key], f"{key} changed: {before[key]!r} -> {after[key]!r}"


def speaks(vocoder: nn.Module) -> bool:
    """A working form: S3Gen's call gives finite audio of the right length."""
    wav, _ = vocoder.inference(speech_feat=torch.randn(1, 80, 12) - 5, cache_source=torch.zeros(1, 1, 0))
    return wav.shape == (1, 12 * 480) and bool(torch.isfinite(wav).all())


def edit_config(folder: Path, path: str, value) -> None:
    config = yaml.safe_load((folder / "config.yaml").read_text())
    *parents, last = path.split(".")
    node = config
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


DELETE = object()


# -- 1. no process-wide Hugging Face setting changes --------------------------------------------------
def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def point_hub_at(monkeypatch, endpoint: str) -> None:
    """What HF_ENDPOINT set before huggingface_hub's import does (it reads it once, into two constants)."""
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")


def test_a_hub_that_does_not_answer_leaves_huggingface_hub_as_it_was(model, monkeypatch, tmp_path):
    """One failed look-up must not make the rest of the process (Chatterbox's own downloads) offline."""
    point_hub_at(monkeypatch, closed_port())
    monkeypatch.setattr(hub, "UNREACHABLE_TTL_S", 0.0, raising=False)  # a Hub that comes back is asked again at once
    before = process_state()
    with pytest.warns(vocos_distill.VocoderFallbackWarning, match="does not answer"):
        assert use_student(model, "someone/vocos-s3gen") is model.mel2wav
    assert_unchanged(before, process_state())
    assert constants.HF_HUB_OFFLINE is False and not constants.is_offline_mode()
    with HubServer("token") as double:
        point_hub_at(monkeypatch, double.url)
        with pytest.raises(HfHubHTTPError):  # the double has no such repo: what counts is that it was asked
            hf_hub_download("ResembleAI/chatterbox", "conds.pt", cache_dir=tmp_path / "hf")
        assert any("ResembleAI/chatterbox" in path for _, path, _ in double.state.requests)
        asked = len(double.state.requests)
        with pytest.warns(vocos_distill.VocoderFallbackWarning):  # ours asks again too, now that it answers
            use_student(model, "someone/vocos-s3gen")
        assert len(double.state.requests) > asked


# -- 3, 5. every mel setting compared; a mistyped one named --------------------------------------------
@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("mel_scale", "htk", "mel_scale htk \\(the S3Gen's: slaney\\)"),
        ("norm", None, "norm None \\(the S3Gen's: slaney\\)"),
        ("kind", "vocos-24khz", "kind vocos-24khz \\(the S3Gen's: s3gen\\)"),
        ("log", "log10 of max(mel, 1e-7)", "log log10 of max"),
        ("win_length", 1024, "win_length 1024"),
        ("f_min", 20.0, "f_min 20"),
        ("mel_scale", DELETE, "mel: block does not say its mel_scale"),
    ],
)
def test_every_mel_setting_is_compared(model, copy_of, field, value, said):
    folder = copy_of()
    edit_config(folder, f"mel.{field}", value)
    hift = model.mel2wav
    with pytest.warns(vocos_distill.VocoderFallbackWarning, match=said) as seen:
        assert use_student(model, folder) is hift
    assert model.mel2wav is hift and len(seen) == 1
    assert "config.yaml" in str(seen[0].message) and "keeping Chatterbox's own vocoder" in str(seen[0].message)


def test_a_plain_vocos_config_is_judged_by_what_vocos_computes(model, copy_of):
    """No `mel:` block: the mel is what vocos' MelSpectrogramFeatures computes (HTK scale, no
    norm, up to Nyquist, log of max(., 1e-7)), another mel than S3Gen's whatever its hop says."""
    folder = copy_of()
    edit_config(folder, "mel", DELETE)
    with pytest.warns(vocos_distill.VocoderFallbackWarning, match="mel_scale htk .*norm None"):
        use_student(model, folder)


@pytest.mark.parametrize(("field", "value"), [("n_mels", "eighty"), ("hop_length", [480]), ("f_max", {"a": 1})])
def test_a_mistyped_mel_setting_keeps_hift_and_names_the_key(model, copy_of, field, value):
    folder = copy_of()
    edit_config(folder, f"mel.{field}", value)
    hift = model.mel2wav
    with pytest.warns(vocos_distill.VocoderFallbackWarning, match=rf"config.yaml: mel.{field} is .*not a number"):
        assert use_student(model, folder) is hift
    with pytest.raises(vocos_distill.VocoderUnavailableError, match=rf"mel.{field}"):
        use_student(model, folder, fallback=False)


def test_a_head_for_another_hop_is_another_mel(model, copy_of):
    """The weights' own settings must agree with the mel block: a head that overlap-adds at hop
    256 gives audio of the wrong length from the very same tensors."""
    folder = copy_of()
    edit_config(folder, "head.init_args.hop_length", 256)
    with pytest.warns(vocos_distill.VocoderFallbackWarning, match="head.init_args.hop_length 256"):
        use_student(model, folder, runtime="torch")
    assert not isinstance(model.mel2wav, ChatterboxVocoder)


# -- 4. auto falls through, and says where it landed -----------------------------------------------------
@pytest.mark.parametrize(
    ("broken", "lands_on", "said"),
    [
        (("model.int8.onnx",), "onnx", "model.int8.onnx"),
        (("model.int8.onnx", "model.onnx"), "torch", "model.onnx"),
        (("model.onnx",), "int8", "model.onnx"),  # int8 passes its check; the fp32 graph it is timed against is broken
        (("model.int8.onnx", "model.onnx", "pytorch_model.bin"), None, "pytorch_model.bin"),
    ],
)
def test_auto_takes_the_next_form_that_works(model, copy_of, broken, lands_on, said, monkeypatch, tmp_path):
    monkeypatch.setenv("VOCOS_DISTILL_CACHE", str(tmp_path / "cold"))  # a cold cache: every check runs
    folder = copy_of()
    for name in broken:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    hift = model.mel2wav
    with pytest.warns(vocos_distill.VocoderFallbackWarning) as seen:
        assert use_student(model, folder) is hift
    assert len(seen) == 1, [str(w.message) for w in seen]
    message = str(seen[0].message)
    assert said in message
    if lands_on is None:
        assert model.mel2wav is hift and "keeping Chatterbox's own vocoder" in message
    else:
        assert model.mel2wav.runtime == lands_on and speaks(model.mel2wav)
        assert f"runtime='auto' is using runtime '{lands_on}'" in message


# -- 6. a local path is not only a Hub id ------------------------------------------------------------------
def test_a_missing_folder_with_one_slash_is_named_as_a_folder(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "release").mkdir()
    with pytest.warns(vocos_distill.VocoderFallbackWarning, match="no folder release/vocos-s3gen-nope") as seen:
        use_student(model, "release/vocos-s3gen-nope", local_files_only=True)
    assert "Hub repo 'release/vocos-s3gen-nope'" in str(seen[0].message)  # and what the Hub said of it


# -- 7. public names; warnings at the caller's line ---------------------------------------------------------
def test_the_names_a_user_catches_are_public_and_warnings_point_at_their_line(model, copy_of, monkeypatch):
    from vocos_distill.int8_check import Int8Check
    from vocos_distill.int8_check import Int8MismatchError as internal

    assert vocos_distill.Int8MismatchError is internal
    for name in ("Int8FallbackWarning", "Int8MismatchError", "VocoderUnavailableError", "VocoderFallbackWarning",
                 "ConfigError", "StreamClosedError", "StreamBusyError", "restore_hift"):  # fmt: skip
        assert name in vocos_distill.__all__ and getattr(vocos_distill, name)
    assert issubclass(vocos_distill.Int8FallbackWarning, vocos_distill.VocoderFallbackWarning)

    def failing(name, sha256, metadata, path):
        return Int8Check(False, 3.0, 30.0, 45.0, "a CPU whose int8 kernels overflow", "reproduces it at 3.0 dB")

    monkeypatch.setattr("vocos_distill.onnx.self_check", failing)
    folder = copy_of()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        line = sys._getframe().f_lineno + 1
        use_student(model, folder)
    assert [w.category for w in seen] == [vocos_distill.Int8FallbackWarning]
    assert (seen[0].filename, seen[0].lineno) == (__file__, line)
    assert model.mel2wav.runtime == "onnx" and "3.0 dB" in str(seen[0].message)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        line = sys._getframe().f_lineno + 1
        use_student(model, folder / "nowhere")
    assert (seen[0].filename, seen[0].lineno) == (__file__, line)
    with pytest.raises(vocos_distill.Int8MismatchError):
        use_student(model, folder, runtime="int8", fallback=False)


# -- 2. twice, and back --------------------------------------------------------------------------------------
def test_use_student_twice_still_returns_hift_and_restore_puts_it_back(model, release):
    from vocos_distill.chatterbox import restore_hift

    hift = model.mel2wav
    first = use_student(model, release, runtime="torch")
    second = use_student(model, release, runtime="onnx")
    assert first is hift and second is hift and model.mel2wav.runtime == "onnx"
    assert isinstance(restore_hift(model), ChatterboxVocoder) and model.mel2wav is hift
    assert restore_hift(model) is None and model.mel2wav is hift  # nothing to undo: says so by returning None
    use_student(model, release, runtime="torch")
    with pytest.warns(vocos_distill.VocoderFallbackWarning, match="keeping Chatterbox's own vocoder"):
        assert use_student(model, release / "nowhere") is hift
    assert model.mel2wav is hift  # a failed swap leaves HiFT, whatever was in place


# -- the fuzz: every file broken, every setting changed or mistyped ----------------------------------------------
def _file_cases():
    for name in FILES:
        for how in ("truncated", "zeroed", "missing"):
            yield name, how


def _config_cases(release: Path):
    config = yaml.safe_load((release / "config.yaml").read_text())

    def leaves(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    for path, value in leaves(config):
        if isinstance(value, str):
            changes = [value + "x", 7]
        elif isinstance(value, bool):
            changes = [not value, "maybe"]
        elif isinstance(value, int | float):
            changes = [value * 2 + 1, "eighty"]
        else:
            changes = ["surprise", 3]
        for change in changes:
            yield path, change
    for part in ("feature_extractor", "backbone", "head", "mel"):
        yield part, DELETE
        yield part, "not a mapping"


@pytest.mark.slow
def test_fuzz_every_broken_release_loads_a_working_form_or_keeps_hift_and_says_why(release, tmp_path, monkeypatch):
    """Each file truncated, zeroed or missing, each config.yaml setting (the mel block's and vocos'
    own) changed or mistyped, in turn: each case speaks through a working student, or keeps HiFT
    with one warning naming the file or setting, raises nothing, and changes no process-wide state."""
    cases = [("file", *c) for c in _file_cases()] + [("config", *c) for c in _config_cases(release)]
    assert len(cases) > 60
    outcomes = {"student": 0, "hift": 0}
    for i, (kind, what, how) in enumerate(cases):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        for file in release.iterdir():
            (folder / file.name).write_bytes(file.read_bytes())
        if kind == "file":
            data = (folder / what).read_bytes()
            if how == "missing":
                (folder / what).unlink()
            else:
                (folder / what).write_bytes(data[: len(data) // 2] if how == "truncated" else bytes(len(data)))
            named = what
        else:
            edit_config(folder, what, how)
            named = what.split(".")[-1] if what != "mel" else "mel"
        model = StandInS3Gen()
        hift = model.mel2wav
        before = process_state()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            try:
                returned = use_student(model, folder)
            except Exception as err:  # noqa: BLE001 - the point: nothing may escape
                pytest.fail(f"{kind} {what} {how!r}: raised {type(err).__name__}: {err}")
        assert_unchanged(before, process_state())
        assert returned is hift, (kind, what, how)
        ours = [w for w in seen if issubclass(w.category, vocos_distill.VocoderFallbackWarning)]
        if isinstance(model.mel2wav, ChatterboxVocoder):
            assert speaks(model.mel2wav), (kind, what, how)
            outcomes["student"] += 1
            assert len(ours) <= 1, (kind, what, how, [str(w.message) for w in ours])
            if kind == "file" and what in ("model.int8.onnx", "model.onnx"):  # auto reads both: a broken one is said
                assert len(ours) == 1 and what in str(ours[0].message), (kind, what, how)
                assert f"is using runtime '{model.mel2wav.runtime}'" in str(ours[0].message)
        else:
            assert model.mel2wav is hift
            outcomes["hift"] += 1
            assert len(ours) == 1, (kind, what, how, [str(w.message) for w in ours])
            message = str(ours[0].message)
            assert named in message or (kind == "file" and what == "config.yaml"), (kind, what, how, message)
            assert "keeping Chatterbox's own vocoder" in message
    assert outcomes["student"] and outcomes["hift"], outcomes


# -- one way to load a student (issue 39) --------------------------------------------------------------------
def test_one_way_to_load_a_student_and_the_old_names_warn(release, model):
    import vocos_distill.loader as loader
    from vocos_distill.chatterbox import load_vocoder
    from vocos_distill.release import load_release

    vocoder = vocos_distill.from_pretrained(release, runtime="onnx")
    assert vocoder.runtime == "onnx" and not vocoder.training
    assert vocos_distill.from_pretrained(release / "model.int8.onnx").runtime == "int8"  # a file, too
    for old, call in (
        ("load_release", lambda: load_release(release, runtime="torch")),
        ("load_student", lambda: loader.load_student(release / "model.onnx")),
        ("load_vocoder", lambda: load_vocoder(release, runtime="torch")),
    ):
        with pytest.warns(DeprecationWarning, match=f"{old} is deprecated: use .*from_pretrained"):
            call()
    for gone in ("read_student_file", "student_from_file"):
        assert not hasattr(vocos_distill, gone)
