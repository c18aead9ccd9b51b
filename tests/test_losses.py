"""The reconstruction losses: what each one sees and what it ignores; and how the module weighs them."""

import math

import pytest
import torch

from train.student.model import build_student
from train.training.losses import (
    MultiResolutionMelLoss,
    MultiResolutionSTFTLoss,
    PhaseDerivativeLoss,
    S3GenMelDistance,
)
from train.training.module import VocoderDistillation

RATE = 24_000


FLOOR = 1e-3 * torch.randn(1, RATE // 2, generator=torch.Generator().manual_seed(0))


def tone(freq: float, phase: float = 0.0, seconds: float = 0.5) -> torch.Tensor:
    """A faded-in-and-out tone over a fixed noise floor (the same in every call, so that the
    bands without the tone compare equal)."""
    t = torch.arange(int(seconds * RATE)) / RATE
    return (0.3 * torch.sin(2 * math.pi * freq * t + phase) * torch.hann_window(t.numel())).unsqueeze(0) + FLOOR


def test_the_phase_loss_ignores_absolute_phase_but_sees_frequency_and_timing():
    loss = PhaseDerivativeLoss()
    reference = tone(200.0)
    assert loss(reference, reference) < 1e-4  # not exactly 0: bins near the floor are shorter than unit phasors
    shifted = loss(tone(200.0, phase=math.pi / 2), reference)  # a constant phase offset: a mel cannot fix it
    detuned = loss(tone(230.0), reference)  # the phase advances at another rate
    assert shifted < 0.05 and detuned > 10 * shifted
    # magnitude-weighted: phase errors where the reference has little energy count little
    quiet = reference + 1e-4 * torch.randn(reference.shape, generator=torch.Generator().manual_seed(1))
    assert loss(quiet, reference) < 0.05


# -- defect: the phase loss's gradient was NaN for quiet output (a pilot's weights went NaN) ------
@pytest.mark.parametrize("level", [1e-3, 1e-6, 1e-9, 1e-15, 1e-22, 0.0])
def test_the_phase_loss_gradient_is_finite_and_bounded_however_quiet_the_output(level):
    """The angle of a tiny bin has a gradient of about 1 / its magnitude: 642 at 1e-6, inf then
    NaN below 1e-9. A student that goes near-silent on some segment must not poison its weights."""
    reference = tone(200.0)
    y_hat = (level * torch.randn(reference.shape, generator=torch.Generator().manual_seed(2))).requires_grad_(True)
    value = PhaseDerivativeLoss()(y_hat, reference)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(y_hat.grad).all()
    assert y_hat.grad.abs().max() < 1e4  # about 1 / the floor at most; the angle form: NaN from 1e-9 down


def test_the_magnitude_losses_ignore_phase_and_see_level():
    for loss in (MultiResolutionMelLoss(), MultiResolutionSTFTLoss(), S3GenMelDistance()):
        reference = tone(200.0)
        assert loss(tone(200.0, phase=1.0), reference) < 0.05 * loss(0.5 * reference, reference)


@pytest.mark.parametrize("term", ["stft", "s3gen_mel", "phase"])
def test_each_optional_term_is_weighted_into_the_reconstruction_loss(term):
    student = build_student(dim=16, intermediate_dim=32, num_layers=1)
    base = VocoderDistillation(student, optimizer_g=torch.optim.AdamW, target_weights={"audio": 1.0})
    module = VocoderDistillation(
        student, optimizer_g=torch.optim.AdamW, target_weights={"audio": 1.0}, **{f"{term}_loss_weight": 2.0}
    )
    y_hat, y = tone(200.0) + 0.01 * torch.randn(1, RATE // 2), tone(210.0)
    without, parts_without = base.reconstruction_loss(y_hat, {"audio": y})
    total, parts = module.reconstruction_loss(y_hat, {"audio": y})
    assert f"{term}_audio" not in parts_without
    assert total == pytest.approx(float(without + 2.0 * parts[f"{term}_audio"]), rel=1e-5)
