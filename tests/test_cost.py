"""Cost figures on small models whose answers are known."""

import pytest
import torch
from torch import nn

from train.evaluation import cost
from train.student.model import build_student


class Hungry(nn.Module):
    """Allocates and touches ``mb`` MiB per call."""

    def __init__(self, mb: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.mb = mb

    def forward(self, mel):
        scratch = torch.ones(self.mb * 2**18)  # float32: 4 bytes each
        return (scratch.sum() * self.scale).expand(mel.shape[0], mel.shape[-1] * 480)


def test_weights_bytes_is_the_safetensors_file_size():
    model = nn.Linear(100, 10)
    size = cost.weights_bytes(model)
    assert 4 * 1010 < size < 4 * 1010 + 1024  # tensors plus a small JSON header


@pytest.mark.slow
def test_peak_rss_is_measured_in_a_fresh_process_and_sees_what_a_call_allocates():
    mel = torch.zeros(1, 80, 10)
    peak, added = cost.peak_rss_mb(Hungry(200), mel)
    assert added == pytest.approx(200, abs=25)
    assert peak > added + 50  # the interpreter, torch and the model come first
    assert cost.peak_rss_mb(Hungry(1), mel)[1] < 25


@pytest.mark.slow
def test_profile_reports_every_figure_and_restores_threads():
    torch.manual_seed(0)
    student = build_student(dim=32, intermediate_dim=64, num_layers=1).eval()
    threads = torch.get_num_threads()
    row = cost.profile(student, torch.randn(1, 80, 50), chunk_frames=(5, 10), repeats=1, cuda=False)
    assert torch.get_num_threads() == threads
    assert row["params"] == sum(p.numel() for p in student.parameters())
    assert row["weights_bytes"] >= 4 * row["params"]
    assert row["rtf_cpu_1_thread"] > 0 and row["rtf_cpu_all_threads"] > 0
    assert row["peak_rss_mb"] > row["peak_rss_increase_mb"] >= 0
    assert set(row["first_chunk_ms_cpu"]) == {"5", "10"} and all(v > 0 for v in row["first_chunk_ms_cpu"].values())
    assert row["rtf_cuda"] is None and row["first_chunk_ms_cuda"] is None


def test_time_call_is_the_median_after_a_warm_up():
    calls = []
    assert cost.time_call(lambda: calls.append(1), repeats=3) >= 0
    assert len(calls) == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_profile_on_cuda():
    student = build_student(dim=32, intermediate_dim=64, num_layers=1).eval()
    row = cost.profile(student, torch.randn(1, 80, 50), chunk_frames=(5,), repeats=1, cuda=True)
    assert row["rtf_cuda"] > 0 and row["cuda_peak_allocated_mb"] > 0 and row["first_chunk_ms_cuda"]["5"] > 0
    assert next(student.parameters()).device.type == "cpu"
