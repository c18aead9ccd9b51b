"""An int8 graph that checks itself on the machine it runs on.

Integer kernels differ between CPUs (see :data:`train.student.graph.INT8_SCHEMES`), so a graph
that was right where it was written can be wrong elsewhere. Three defences, from cheapest:

1. :func:`overflow_risks`: the written graph's integer weights against the bound of the
   kernels that add u8 x s8 products in int16 pairs (``2 * 255 * max|w| <= 32,767``). It
   needs no CPU and no input: the writer refuses a graph that fails it.
2. The probe: :func:`train.student.graph.export_onnx` stores in every int8 graph a few short
   mel windows (those it reproduces worst where it is written: the large activations that
   overflow a wrong kernel) and the output the graph must reproduce (the fake-quantised QAT model's, or the fp32 model's
   without QAT), with the SNR the graph reached where it was written and the least SNR it must
   reach anywhere (``probe_min_snr_db``: the writer's ``min_snr_db``, or 3 dB under what the
   writer measured if that is lower; right kernels agree to a few hundredths of a dB, a
   saturating one loses 10-25 dB).
3. :func:`self_check`: runs the probe on this machine, in a process of its own (a kernel that
   dies of an illegal instruction fails the check instead of the caller), once per file, CPU
   and ONNX Runtime version, and remembers the answer (:func:`cache_path`), so later loads cost
   a hash.
   :class:`~vocos_distill.onnx.OnnxVocoder` calls it for every int8 graph it loads and raises
   :class:`Int8MismatchError` under the threshold; the Chatterbox drop-in's ``runtime="auto"``
   falls back to the fp32 runtime instead, and also takes fp32 where int8 is not faster here
   (:func:`vocos_distill.onnx.speed_check`).

The CPU is named wherever an int8 figure is written (:func:`cpu_info`, :func:`describe_cpu`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import platform
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vocos_distill.errors import ConfigError
from vocos_distill.files import atomic_write_text

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)
# CPU features that decide which int8 kernels run (x86, then ARM64): named beside every int8 figure
INT8_FEATURES = (
    "sse4_1",
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
)
PROBE_KEY = "int8_probe"
# int8 schemes whose products fit every kernel's sums (train.student.graph.INT8_SCHEMES says why)
EXACT_SCHEMES = ("u8s8-7bit", "u8u8")
CACHE_ENV = "VOCOS_DISTILL_CACHE"


class Int8MismatchError(ConfigError, RuntimeError):
    """An int8 graph that does not reproduce its model on this machine."""


# -- the probe ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    mel: np.ndarray  # (windows, n_mels, frames)
    expected: np.ndarray  # (windows, frames * hop / stride): every stride-th sample of what the graph must give
    stride: int
    snr_db: float  # what it gave where it was written
    min_snr_db: float  # what it must give anywhere

    def snr(self, output: np.ndarray) -> float:
        """The graph's ``output`` on :attr:`mel` against what it must be."""
        return snr_db(self.expected, output[..., :: self.stride])


def _unpack(packed: dict[str, Any]) -> np.ndarray:
    import numpy as np

    data = np.frombuffer(base64.b64decode(packed["float16"]), dtype=np.float16)
    return data.reshape(packed["shape"]).astype(np.float32)


def _pack(array: np.ndarray) -> dict[str, Any]:
    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.float16)
    return {"shape": list(array.shape), "float16": base64.b64encode(array.tobytes()).decode("ascii")}


PROBE_STRIDE = 8  # every 8th output sample is kept: the SNR over them is within ~0.2 dB of the SNR over all
# Windows kept: on a 256/768 x 6 QAT student, the full-range graph on AVX2 lost 0.7 dB on the loudest
# window but 3.8-8 dB on each of the 5 windows it reproduced worst on an exact kernel (129 windows)
PROBE_WINDOWS = 3


def encode_probe(mel: np.ndarray, expected: np.ndarray, snr_db: float, min_snr_db: float) -> str:
    """The probe as it is stored in a graph's metadata: the mels and every :data:`PROBE_STRIDE`-th
    sample of the expected outputs, in float16 (its rounding is ~66 dB down); 9 KB a window."""
    return json.dumps(
        {
            "mel": _pack(mel),
            "expected": _pack(expected[..., ::PROBE_STRIDE]),
            "stride": PROBE_STRIDE,
            "snr_db": round(snr_db, 2),
            "min_snr_db": min_snr_db,
        }
    )


def read_probe(metadata: dict[str, str]) -> Probe | None:
    if PROBE_KEY not in metadata:
        return None
    raw = json.loads(metadata[PROBE_KEY])
    return Probe(
        _unpack(raw["mel"]),
        _unpack(raw["expected"]),
        int(raw["stride"]),
        float(raw["snr_db"]),
        float(raw["min_snr_db"]),
    )


def snr_db(reference: Any, estimate: Any) -> float:
    """10 log10(|reference|^2 / |reference - estimate|^2) over all samples, in float64: how closely
    one runtime or decoding reproduces another's waveform (not a quality score against audio).
    Arrays or tensors (on any device); equal signals give a large finite value (the error's energy
    is floored at 1e-20). The one SNR of this project: the int8 probe, the export's checks and
    the benchmarks all use it."""
    import numpy as np

    def as_array(x: Any) -> np.ndarray:
        if hasattr(x, "detach"):  # a torch tensor, without importing torch here
            x = x.detach().double().cpu().numpy()
        return np.asarray(x, dtype=np.float64)

    reference, estimate = as_array(reference), as_array(estimate)
    noise = max(float(np.sum((reference - estimate) ** 2)), 1e-20)
    return float(10 * np.log10(float(np.sum(reference**2)) / noise))


# -- the machine ----------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """This CPU's model name, architecture and int8-relevant features, and ONNX Runtime's version."""
    import onnxruntime

    name, flags = "", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not name:
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    if not name and platform.system() == "Darwin":
        import subprocess

        try:
            name = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    machine = platform.machine()
    return {
        "model": name or platform.processor() or machine or "unknown CPU",
        "arch": machine,
        "int8_features": [f for f in INT8_FEATURES if f in flags],
        "onnxruntime": onnxruntime.__version__,
    }


def describe_cpu(info: dict[str, Any] | None = None) -> str:
    """One line: ``AMD EPYC (x86_64: avx2; no AVX-512, no VNNI, no AMX), ONNX Runtime 1.32.0``."""
    info = info or cpu_info()
    features = set(info["int8_features"])
    notes = []
    if info["arch"] in ("x86_64", "AMD64", "i686", "x86"):
        notes += [] if features & {"avx512f", "avx512bw"} else ["no AVX-512"]
        notes += [] if features & {"avx512_vnni", "avx_vnni"} else ["no VNNI"]
        notes += [] if "amx_int8" in features else ["no AMX"]
    listed = ", ".join(sorted(features)) or "no int8 features reported"
    listed += f"; {', '.join(notes)}" if notes else ""
    return f"{info['model']} ({info['arch']}: {listed}), ONNX Runtime {info['onnxruntime']}"


# -- remembering answers --------------------------------------------------------------------------
def cache_path() -> Path:
    """``$VOCOS_DISTILL_CACHE/int8_checks.json``, else under ``$XDG_CACHE_HOME`` or ``~/.cache``."""
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vocos-distill"
    return Path(os.environ.get(CACHE_ENV) or home) / "int8_checks.json"


def machine_key() -> str:
    """What a remembered answer is valid for: this CPU and ONNX Runtime version."""
    info = cpu_info()
    return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]


def recall(key: str) -> dict[str, Any] | None:
    """The answer remembered under ``key`` (:func:`cache_path`), or None."""
    try:
        return json.loads(cache_path().read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def remember(key: str, value: dict[str, Any]) -> None:
    """Keep ``value`` under ``key``, written atomically; a read-only home only costs a rerun."""
    path = cache_path()
    try:
        entries = json.loads(path.read_text()) if path.is_file() else {}
        entries = entries if isinstance(entries, dict) else {}
    except (OSError, ValueError):
        entries = {}
    entries[key] = value
    try:
        atomic_write_text(path, json.dumps(entries, indent=1))
    except OSError as err:  # a read-only home: the check simply runs again next time
        log.debug("int8 check not remembered (%s): %s", path, err)


# -- the checks -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Int8Check:
    ok: bool
    snr_db: float | None  # probe output on this machine vs what it must be (None: the graph has no probe)
    min_snr_db: float | None
    written_snr_db: float | None
    cpu: str
    reason: str  # one sentence, for logs and errors

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Runs ONNX graphs on one mel in a process of its own: `python -c RUNNER mel.npy out_dir graph.onnx ...`
# writes out_dir/<graph file name>.npy. It needs numpy and onnxruntime only (the tests run it on
# emulated CPUs too).
RUNNER = """
import os, sys
import numpy as np, onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.log_severity_level = 3
mel = np.load(sys.argv[1])
for path in sys.argv[3:]:
    wav = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]).run(None, {"mel": mel})[0]
    np.save(os.path.join(sys.argv[2], os.path.basename(path) + ".npy"), wav)
"""


class ProbeCrashed(RuntimeError):
    """The probe's process died: ONNX Runtime's kernels crashed on this CPU."""


def run_in_child(
    path: Path, mel: np.ndarray, prefix: list[str] | None = None, timeout: float = 300, python: str | None = None
) -> np.ndarray:
    """``path``'s output on ``mel`` from a fresh process (``prefix``: e.g. an emulator to run it
    under; ``python``: another interpreter than this one), so that a kernel that kills its
    process (an illegal instruction: ONNX Runtime's aarch64 int8 kernels on ARMv8.0 cores) fails a
    check instead of the caller."""
    import signal
    import subprocess
    import sys
    import tempfile

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "mel.npy", mel)
        command = [*(prefix or []), python or sys.executable, "-c", RUNNER, str(Path(tmp) / "mel.npy"), tmp, str(path)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            died = -done.returncode if done.returncode < 0 else None
            how = f"signal {signal.Signals(died).name}" if died else f"exit status {done.returncode}"
            tail = done.stderr.strip().splitlines()[-1:] or [""]
            raise ProbeCrashed(f"ONNX Runtime's process running {Path(path).name} died ({how}) {tail[0]}".strip())
        return np.load(Path(tmp) / f"{Path(path).name}.npy")


def self_check(name: str, sha256: str, metadata: dict[str, str], path: Path) -> Int8Check:
    """Whether the int8 graph at ``path`` (SHA-256 ``sha256``, named ``name`` in messages) reproduces
    its probe on this machine, run in a process of its own (:func:`run_in_child`). Cached per
    file, CPU and ONNX Runtime version."""
    key = f"probe:{sha256}:{machine_key()}"
    known = recall(key)
    if known is not None:
        return Int8Check(**known)
    cpu = describe_cpu()
    probe = read_probe(metadata)
    if probe is None:
        # A graph that names no scheme was written before the probe, with full-range s8 weights:
        # 2 * 255 * 127 overflows the int16 pair sums of x86 kernels without VNNI
        scheme = metadata.get("int8_scheme", "u8s8")
        features = set(cpu_info()["int8_features"])
        int32_adds = cpu_info()["arch"] not in ("x86_64", "AMD64") or bool(
            features & {"avx512_vnni", "avx_vnni", "amx_int8"}
        )
        ok = scheme in EXACT_SCHEMES or int32_adds
        if scheme in EXACT_SCHEMES:
            verdict = f"its scheme ({scheme}) cannot overflow any kernel"
        elif ok:
            verdict = "its full-range int8 weights could overflow CPUs without VNNI, but this one adds in int32"
        else:
            verdict = "its full-range int8 weights can overflow an int16 pair sum on this CPU, which has no VNNI or AMX"
        reason = f"{name} carries no probe (written before int8 graphs checked themselves); {verdict}"
        result = Int8Check(ok, None, None, None, cpu, reason)
    else:
        try:
            measured = probe.snr(run_in_child(path, probe.mel))
        except (ProbeCrashed, OSError) as err:
            reason = f"{name} could not run its probe on this machine: {err}"
            result = Int8Check(False, None, probe.min_snr_db, probe.snr_db, cpu, reason)
        else:
            ok = measured >= probe.min_snr_db
            reason = (
                f"{name} reproduces its model at {measured:.1f} dB SNR on this machine's probe "
                f"(it must reach {probe.min_snr_db:g} dB; {probe.snr_db:.1f} dB where it was written)"
            )
            result = Int8Check(ok, measured, probe.min_snr_db, probe.snr_db, cpu, reason)
    remember(key, result.as_dict())
    log.info("int8 self-check on %s: %s", cpu, result.reason)
    return result
