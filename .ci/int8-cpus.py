"""An int8 graph's probe on emulated CPUs of every int8 kernel family qemu-user can run.

    python .ci/int8-cpus.py <graph.int8.onnx> [more graphs]    # root, network to the registries

x86-64 (qemu-x86_64): SSE4.1 (Nehalem: widening kernel), AVX2 without VNNI (Haswell: vpmaddubsw,
int16 pairs); qemu 7.2 has no AVX-512 or VNNI. ARM64 (qemu-aarch64, Debian's arm64 Python 3.11 in
a sysroot, ONNX Runtime's aarch64 wheel): Cortex-A72 (ARMv8.0), Neoverse-N1 (dot product), `max`
without SME (i8mm), `max` (i8mm, SVE, SME). ONNX Runtime's CPU detection reads /proc/cpuinfo,
which qemu-user passes through from the host, so each ARM64 run sees a matching one bound over it
in a mount namespace of its own (unshare -m). Not part of CI: it downloads ~60 MB and takes minutes.
Prints, per graph and CPU, the probe's SNR against what the graph must give, or how it died.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from vocos_distill.int8_check import ProbeCrashed, read_probe, run_in_child
from vocos_distill.onnx import OnnxVocoder

X86 = {"x86 SSE4.1 (Nehalem)": "Nehalem", "x86 AVX2, no VNNI (Haswell)": "Haswell"}
ARM_BASE = "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
ARM_DOT = f"{ARM_BASE} atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp"
ARM = {
    "ARM64 v8.0 (Cortex-A72)": ("cortex-a72", ARM_BASE),
    "ARM64 dot product (Neoverse-N1)": ("neoverse-n1", ARM_DOT),
    "ARM64 i8mm, no SME (max,sme=off)": ("max,sme=off", f"{ARM_DOT} sve i8mm bf16 svei8mm"),
    "ARM64 i8mm, SVE, SME (max)": ("max", f"{ARM_DOT} sve i8mm bf16 svei8mm sme"),
}
# what ONNX Runtime's CPU detection needs to find in /proc/cpuinfo (a Neoverse-N1's identity)
CPUINFO = (
    "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
    "CPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n"
)
DEBS = (
    "python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 zlib1g libexpat1 libffi8 libssl3 "
    "libgcc-s1 libstdc++6 libbz2-1.0 liblzma5 libsqlite3-0 libuuid1 libncursesw6 libtinfo6 libreadline8 "
    "libcrypt1 libnsl2 libtirpc3 libdb5.3"
).split()


def arm64_sysroot(root: Path) -> Path:
    """Debian's arm64 Python 3.11 unpacked under ``root``, with numpy and onnxruntime (this
    environment's versions) for aarch64 beside it; returns the site folder."""
    subprocess.run(["dpkg", "--add-architecture", "arm64"], check=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=subprocess.DEVNULL)
    debs = root / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", "-qq", *[f"{d}:arm64" for d in DEBS]], cwd=debs, check=True)
    for deb in debs.glob("*.deb"):
        subprocess.run(["dpkg", "-x", str(deb), str(root / "sys")], check=True)
    wheels, site = root / "wheels", root / "site"
    versions = [f"{name}=={importlib.metadata.version(name)}" for name in ("onnxruntime", "numpy")]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
         "3.11", "--implementation", "cp", "--platform", "manylinux_2_28_aarch64", "--platform",
         "manylinux2014_aarch64", "-d", str(wheels), *versions, "flatbuffers", "protobuf", "packaging"],
        check=True,
    )  # fmt: skip
    for wheel in wheels.glob("*.whl"):
        shutil.unpack_archive(wheel, site, "zip")
    return site


def probe_snr(path: Path, prefix: list[str] | None = None, python: str | None = None) -> str:
    probe = read_probe(OnnxVocoder(path, check=False).metadata)
    try:
        return f"{probe.snr(run_in_child(path, probe.mel, prefix, python=python)):.1f} dB (needs {probe.min_snr_db:g})"
    except ProbeCrashed as err:
        return f"died: {str(err).split('(', 1)[-1].split(')')[0]}"


def main(graphs: list[Path]) -> None:
    if platform.machine() != "x86_64" or not shutil.which("qemu-x86_64") or not shutil.which("qemu-aarch64"):
        raise SystemExit("needs an x86-64 host with qemu-user (apt-get install qemu-user)")
    rows = {g.name: {"this CPU": probe_snr(g)} for g in graphs}
    for name, cpu in X86.items():
        for g in graphs:
            # numpy's OpenBLAS picks kernels by itself and, on an AVX-512 host, took AVX ones under the
            # emulated Nehalem (SIGILL on import): name its core type (tests/test_int8.py, OPENBLAS_CORE)
            core = f"OPENBLAS_CORETYPE={cpu.upper()}"
            rows[g.name][name] = probe_snr(g, ["env", core, "qemu-x86_64", "-cpu", cpu])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        site = arm64_sysroot(root)
        os.environ.update(PYTHONHOME=str(root / "sys/usr"), PYTHONPATH=str(site))
        for name, (cpu, features) in ARM.items():
            cpuinfo = root / f"cpuinfo-{cpu}"
            cpuinfo.write_text(CPUINFO.format(features=features))
            bind = f'mount --bind {cpuinfo} /proc/cpuinfo && exec qemu-aarch64 -cpu {cpu} -L {root / "sys"} "$@"'
            for g in graphs:
                rows[g.name][name] = probe_snr(
                    g, ["unshare", "-m", "sh", "-c", bind, "sh"], str(root / "sys/usr/bin/python3.11")
                )
        for key in ("PYTHONHOME", "PYTHONPATH"):
            os.environ.pop(key)
    for graph, cells in rows.items():
        print(f"\n{graph}")
        for cpu, cell in cells.items():
            print(f"  {cpu:34s} {cell}")


if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]])
