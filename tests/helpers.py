"""Shared test helpers: the conformance kit and checkpoints written in Chatterbox's layout."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from train.s3gen.hift import HiFTGenerator
from train.student.model import build_student

KIT = Path(__file__).parent / "fixtures" / "conformance"
SMALL_WEIGHTS = KIT / "hift_small_weights.safetensors"

QEMU = shutil.which("qemu-x86_64")
# x86 kernel families qemu 7.2 can emulate (no AVX-512, no VNNI): SSE4.1 and AVX2
EMULATED = {"sse4.1": "Nehalem", "avx2": "Haswell"}
# numpy's OpenBLAS picks its kernels by itself: under qemu-user on an AVX-512 host (AMD EPYC, Zen 4)
# it took an AVX kernel on the emulated Nehalem, and `import numpy` died of SIGILL. Naming its core
# type keeps numpy on the emulated CPU's own instructions; torch and ONNX Runtime still pick their
# kernels from the emulated CPUID, which is what the tests that use this are about.
OPENBLAS_CORE = {"Nehalem": "NEHALEM", "Haswell": "HASWELL"}


def emulated(cpu: str) -> list[str]:
    """The command prefix that runs a process on qemu-user's emulated ``cpu`` (``EMULATED``)."""
    return ["env", f"OPENBLAS_CORETYPE={OPENBLAS_CORE[cpu]}", QEMU, "-cpu", cpu]


def need_qemu() -> None:
    """Skip without qemu-user, except in CI, where its absence is a failure (.ci/run installs it)."""
    import pytest

    if QEMU is None:
        if os.environ.get("CI"):
            pytest.fail("qemu-user is missing: .ci/run installs it (apt-get install qemu-user)")
        pytest.skip("apt-get install qemu-user: runs this on emulated CPUs of other kernel families")


# Keys that sit beside the vocoder in a real S3Gen checkpoint.
UNRELATED = {
    "flow.input_embedding.weight": torch.zeros(4, 2),
    "speaker_encoder.xvector.block1.weight": torch.zeros(3),
    "tokenizer._mel_filters": torch.zeros(2, 2),
}


def small_config() -> dict:
    """HiFTGenerator arguments of the reduced-width reference model, from the file's metadata."""
    with safe_open(str(SMALL_WEIGHTS), "pt") as f:
        return json.loads(f.metadata()["config"])


def tiny_config() -> dict:
    """An even smaller HiFT for fast end-to-end tests."""
    return {**small_config(), "base_channels": 16, "f0_predictor": {"in_channels": 80, "cond_channels": 16}}


def to_legacy_keys(state: dict) -> dict:
    """Rename parametrized weight-norm keys to the older weight_g / weight_v style."""
    return {
        k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        ): v
        for k, v in state.items()
    }


def write_s3gen_checkpoint(
    path: Path, model: HiFTGenerator, legacy_keys: bool = False, config_metadata: bool = True
) -> Path:
    """Write ``model`` as Chatterbox does: ``mel2wav.``-prefixed keys beside unrelated S3Gen keys."""
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if legacy_keys:
        state = to_legacy_keys(state)
    full = {**UNRELATED, **{f"mel2wav.{k}": v for k, v in state.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        metadata = {"config": json.dumps(model.config)} if config_metadata else None
        save_file(full, str(path), metadata=metadata)
    else:
        torch.save(full, path)
    return path


# -- training fixtures ------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
CORPUS_CLIP = REPO / "data" / "corpus" / "librivox" / "sense_and_sensibility_01_austen_64kb-0870.flac"


def write_clips(folder: Path, count: int = 5, seconds: float = 0.6) -> Path:
    """``clip0.wav`` ... from real speech; with 5 clips the split is 4 train / 1 validation."""
    import soundfile as sf

    audio, rate = sf.read(str(CORPUS_CLIP), dtype="float32")
    length = int(seconds * rate)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        sf.write(str(folder / f"clip{i}.wav"), audio[i * length : (i + 1) * length], rate)
    return folder


def compose(overrides: list[str], tmp_path: Path, config_name: str = "train"):
    """The real config, composed as ``train/fit.py`` (or ``train/evaluate.py``) would, with
    outputs under ``tmp_path``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import train.utils.hydra_setup  # noqa: F401  (resolvers)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(
            config_name,
            overrides=[
                f"paths.log_dir={tmp_path / 'checkpoints'}",
                f"paths.output_dir={tmp_path / 'run'}",
                *overrides,
            ],
        )


TINY_STUDENT = ["student.dim=32", "student.intermediate_dim=64", "student.num_layers=1"]


def read_wandb_history(path: Path) -> list[dict]:
    """History rows of an offline ``run-*.wandb`` file (a LevelDB-style log of protobuf Records)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    header = 7  # b":W&B" + 2-byte magic + 1-byte version
    block, rows, pending, pos = 32 * 1024, [], b"", header
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # block trailer padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: one whole Record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                )
    return rows


def wandb_logged(path: Path, keys: tuple[str, ...], timeout: float = 60.0) -> dict:
    """Every key an offline ``run-*.wandb`` file's history holds (the last value of each), once it
    holds ``keys``: W&B's own service process writes the file, and on a loaded machine its last
    records can reach the disk after ``wandb.finish()`` returns, so the file is read again until
    they are there (or ``timeout`` seconds have passed, and the caller's assertion says which is missing)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        logged = {key: value for row in read_wandb_history(path) for key, value in row.items()}
        if all(key in logged for key in keys) or time.monotonic() > deadline:
            return logged
        time.sleep(0.5)


class Interrupted(RuntimeError):
    """Raised by :class:`StopAt`: a run cut short, as by a crash or a lost node."""


class StopAt:
    """A Lightning callback (``+callbacks.stop={_target_: helpers.StopAt, step: N}``) that
    interrupts training when ``global_step`` reaches ``step``, like a crash would."""

    def __new__(cls, step: int):
        from lightning.pytorch import Callback

        class _Stop(Callback):
            def on_train_batch_start(self, trainer, *args):
                if trainer.global_step >= step:
                    raise Interrupted(f"interrupted at step {trainer.global_step}")

        return _Stop()


def student(dim=32, intermediate_dim=64, num_layers=2, seed=0, **shape):
    """A small student with random weights that look trained (``shape``: more build settings)."""
    torch.manual_seed(seed)
    s = build_student(dim=dim, intermediate_dim=intermediate_dim, num_layers=num_layers, **shape).eval()
    for block in s.backbone.convnext:  # a trained-looking layer scale (Vocos initialises it near zero)
        block.gamma.data.uniform_(0.2, 0.6)
    return s


def save_ckpt(model, path):
    """A training checkpoint's student part: ``generator.*`` weights and the build config."""
    torch.save({"state_dict": {f"generator.{k}": v for k, v in model.state_dict().items()},
                "student_config": model.config.to_dict()}, path)  # fmt: skip


def write_release(folder: Path, model=None, fp32_graph: bool = True) -> Path:
    """A release folder as ``train/export.py`` lays out its loadable part: vocos' ``config.yaml``
    and ``pytorch_model.bin``, ``model.onnx`` and ``model.int8.onnx`` (with its probe), from a
    tiny fake-quantised student (or ``model``)."""
    from train.release.vocos_layout import write_vocos_layout
    from train.student.graph import export_onnx
    from train.student.quantized import prepare, strip

    if model is None:
        model = prepare(student(dim=32, intermediate_dim=64, num_layers=2, seed=1)).eval()
    folder.mkdir(parents=True, exist_ok=True)
    write_vocos_layout(strip(model), folder)
    if fp32_graph:
        export_onnx(model, folder / "model.onnx")
    export_onnx(model, folder / "model.int8.onnx", quantize=True)
    return folder
