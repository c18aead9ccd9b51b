"""The prepare stage: sharded over processes, resumable, and what fit.py finds afterwards."""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO, small_config, write_clips, write_s3gen_checkpoint

from train.data.fill import shard
from train.data.sources import Utterance
from train.s3gen.hift import HiFTGenerator


def test_shares_are_disjoint_complete_and_balanced_by_bytes():
    utterances = [Utterance(f"u{i}", None, f"k{i}", "audio", bytes=size) for i, size in enumerate([9, 1, 1, 1, 5, 3])]
    shares = [shard(utterances, rank, 2) for rank in range(2)]
    names = [{u.name for u in share} for share in shares]
    assert not names[0] & names[1] and names[0] | names[1] == {u.name for u in utterances}
    assert sorted(sum(u.bytes for u in share) for share in shares) == [10, 10]
    assert shard(utterances, 0, 1) == sorted(utterances, key=lambda u: u.name)


@pytest.mark.slow
def test_two_torchrun_processes_each_prepare_half_and_together_everything(tmp_path):
    clips = write_clips(tmp_path / "clips", count=6)
    torch.manual_seed(0)
    teacher = write_s3gen_checkpoint(tmp_path / "s3gen.safetensors", HiFTGenerator(**small_config()))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(REPO / "train" / "prepare.py"),
        "experiment=tiny",
        f"data.audio_dirs=[{clips}]",
        f"teacher.checkpoint={teacher}",
        f"paths.log_dir={tmp_path / 'ck'}",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    reports = [json.loads(p.read_text()) for p in sorted((tmp_path / "ck").rglob("prepare_rank*.json"))]
    assert [r["rank"] for r in reports] == [0, 1] and {r["world_size"] for r in reports} == {2}
    done = [set(r["prepared_keys"]) for r in reports]
    assert not done[0] & done[1] and len(done[0]) == len(done[1]) == 3  # six equal clips: three each
    cache = tmp_path / "ck" / "cache"
    assert len(list((cache / "mel").rglob("*.pt"))) == 6 and len(list((cache / "teacher").rglob("*.pt"))) == 6
    assert "prepared 6 utterances" in output
    # once more: everything is cached, nothing is computed
    again = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert again.returncode == 0 and "prepared 0 utterances" in again.stdout + again.stderr
