"""The GPU run behind ``.ci/gpu-check``: each check timed, one summary table at the end, every
figure with the GPU's name. ``--imports-only``: import what the checks use, and stop."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPORTS = ["torch", "lightning", "hydra", "hydra_zen", "rootutils", "vocos", "chatterbox.models.s3gen",
           "chatterbox.tts", "train.data.flow_mels", "train.s3gen.flow", "train.training.fit", "train.bench",
           "vocos_distill.chatterbox"]  # fmt: skip


def shell(name: str, command: list[str], rows: list[tuple[str, str]], timeout: int) -> str:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - started
    status = "ok" if done.returncode == 0 else f"FAILED (exit {done.returncode})"
    rows.append((name, f"{status} in {seconds:.0f} s"))
    print(f"== {name}: {status}\n{(done.stdout + done.stderr)[-4000:]}", flush=True)
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--imports-only", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    for module in IMPORTS:
        importlib.import_module(module)
    if args.imports_only:
        print(f"gpu-check: {len(IMPORTS)} imports resolve")
        return
    import torch

    gpu = torch.cuda.get_device_name(0)
    rows: list[tuple[str, str]] = []
    shell("CUDA-marked tests", [sys.executable, "-m", "pytest", "-q", "-n0", "-rs", "-k", "cuda",
                                "tests/test_cost.py", "tests/test_teacher.py"], rows, 120)  # fmt: skip
    from train.s3gen.flow import save_stand_in

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_stand_in(Path(tmp) / "s3gen.safetensors")
        # flow-mel preparation on the GPU: the bundled corpus, flow mels only, a fresh cache
        from train.data.datamodule import VocoderDataModule
        from train.data.flow_mels import FlowMels
        from train.s3gen.teacher import load_teacher

        teacher = load_teacher(checkpoint, device="cuda")
        data = VocoderDataModule(cache_dir=f"{tmp}/cache", audio_dirs=[str(ROOT / "data/corpus")],
                                 mel_source="flow", flow=FlowMels(checkpoint=str(checkpoint), device="cuda"),
                                 teacher=teacher)  # fmt: skip
        report = data.prepare()
        clips = len(report.prepared_keys)
        rows.append(("flow-mel preparation (bundled corpus, 10 CFM steps + HiFT)",
                     f"{clips / report.wall_seconds:.2f} clips/s, {report.audio_seconds / report.wall_seconds:.1f} "
                     f"s of audio/s"))  # fmt: skip
        del teacher, data
        torch.cuda.empty_cache()
        # 200 steps of the recipe in bf16, on the cache just filled
        fit = [sys.executable, "-c", FIT, str(checkpoint), f"{tmp}/cache", f"{tmp}/runs"]
        out = shell("experiment=distill, 200 steps, bf16-mixed", fit, rows, 240)
        rows += [tuple(line[len("ROW ") :].split("|", 1)) for line in out.splitlines() if line.startswith("ROW ")]
    shell("python train/bench.py (fp32)", [sys.executable, "-m", "train.bench", "--train-steps", "0",
                                           "--seconds", "10"], rows, 120)  # fmt: skip
    shell("python train/bench.py --chatterbox", [sys.executable, "-m", "train.bench", "--chatterbox",
                                                 "--seconds", "10", "--t3-seconds", "2"], rows, 120)  # fmt: skip
    print(f"\n| check on {gpu} | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


FIT = """
import math, sys, time
from pathlib import Path
import torch
from hydra import compose, initialize_config_dir
import train.utils.hydra_setup
from train.training.fit import fit

checkpoint, cache, runs = sys.argv[1:4]
overrides = ["experiment=distill", f"teacher.checkpoint={checkpoint}", "student.init_from=null",
             f"paths.cache_dir={cache}", f"paths.log_dir={runs}", f"paths.output_dir={runs}/run",
             "data.audio_dirs=[data/corpus]", "data.val_dirs=[]", "data.num_workers=2", "trainer.max_steps=200",
             "trainer.val_check_interval=200", "trainer.precision=bf16-mixed", "module.mel_only_steps=100",
             "logger=csv", "validate_first=false"]
with initialize_config_dir(config_dir=str(Path("conf").resolve()), version_base="1.3"):
    cfg = compose("train", overrides=overrides)
torch.cuda.reset_peak_memory_stats()
started = time.perf_counter()
final = fit(cfg)["final"]
seconds = time.perf_counter() - started
finite = all(math.isfinite(v) for k, v in final.items() if k.startswith("train/loss"))
print(f"ROW steps/s (with one validation)|{200 / seconds:.2f}")
print(f"ROW peak CUDA memory|{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
print(f"ROW losses finite|{finite} (loss_g {final.get('train/loss_g')}, loss_d {final.get('train/loss_d')})")
"""

if __name__ == "__main__":
    main()
