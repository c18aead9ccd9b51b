"""The student in the ``vocos`` package's own layout: ``config.yaml`` + ``pytorch_model.bin``.

``Vocos.from_hparams(config.yaml)`` builds ``MelSpectrogramFeatures``, ``VocosBackbone`` and
``ISTFTHead`` from it; a strict ``load_state_dict`` of ``pytorch_model.bin`` (what
``Vocos.from_pretrained`` does) then gives ``decode(mel)`` equal to the student, whose keys are
already ``backbone.*`` / ``head.*``.

``MelSpectrogramFeatures`` cannot be configured into the S3Gen mel (its filterbank is HTK-scale,
unnormalised, up to 12 kHz), but the filterbank is a buffer saved with the weights, so the
release stores S3Gen's Slaney 0-8 kHz filterbank there. With ``padding: same`` the framing is
S3Gen's too (reflect padding of 720 samples per side, no centring). What still differs is the
log floor and the magnitude epsilon (``log(max(x, 1e-7))`` of ``|X|`` against S3Gen's
``log(max(x, 1e-5))`` of ``sqrt(|X|^2 + 1e-9)``); :func:`feature_residual` measures it, and the
model card states it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
import yaml
from torch import Tensor, nn
from vocos import Vocos

from train.evaluation.metrics import DB_PER_NEPER
from train.s3gen.mel import S3GenMel
from vocos_distill.config import MEL_SPEC
from vocos_distill.release import CONFIG, WEIGHTS

FILTERBANK_KEY = "feature_extractor.mel_spec.mel_scale.fb"


def vocos_state_dict(student: nn.Module) -> dict[str, Tensor]:
    """The student's weights plus the feature extractor's buffers, S3Gen's filterbank among them:
    every key a Vocos built from its :meth:`~vocos_distill.config.StudentConfig.vocos_yaml`
    expects, for a strict load."""
    config = student.config
    if config.n_fft != MEL_SPEC["n_fft"] or config.input_channels != MEL_SPEC["n_mels"]:
        raise ValueError(f"a student for {config.input_channels} mels at n_fft {config.n_fft} is not S3Gen's")
    mel = S3GenMel()
    extractor = {
        "feature_extractor.mel_spec.spectrogram.window": mel.window.clone(),
        FILTERBANK_KEY: mel.fbank.T.contiguous(),  # (n_freqs, n_mels), as torchaudio's MelScale keeps it
    }
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in student.state_dict().items()}
    return {**extractor, **weights}


def write_vocos_layout(student: nn.Module, folder: Path) -> list[Path]:
    """Write ``config.yaml`` and ``pytorch_model.bin`` into ``folder`` (a fresh staging folder)."""
    (folder / CONFIG).write_text(yaml.safe_dump(student.config.vocos_yaml(), sort_keys=False))
    torch.save(vocos_state_dict(student), folder / WEIGHTS)
    return [folder / CONFIG, folder / WEIGHTS]


def load_vocos(folder: str | Path) -> Vocos:
    """A release folder through ``vocos``' own code, as ``Vocos.from_pretrained`` reads a Hub repo."""
    folder = Path(folder)
    model = Vocos.from_hparams(str(folder / CONFIG))
    model.load_state_dict(torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True), strict=True)
    return model.eval()


def feature_residual(vocos: Vocos, clips: Iterable[tuple[Tensor, Tensor]]) -> dict[str, float]:
    """How far ``vocos.feature_extractor(audio)`` is from the true S3Gen mel, over ``(audio, mel)``
    pairs (24 kHz audio ``(L,)``, its S3Gen mel ``(80, T)``): in natural-log units, and the
    mean as a log-mel distance in dB (:data:`~train.evaluation.metrics.DB_PER_NEPER` times it)."""
    diffs = []
    for audio, mel in clips:
        with torch.no_grad():
            features = vocos.feature_extractor(audio.float().unsqueeze(0))[0]
        frames = min(features.shape[-1], mel.shape[-1])
        diffs.append((features[:, :frames] - mel[:, :frames]).abs().flatten())
    if not diffs:
        return {}
    every = torch.cat(diffs)
    return {
        "max_abs": float(every.max()),
        "mean_abs": float(every.mean()),
        "mean_abs_db": float(every.mean() * DB_PER_NEPER),
        "share_of_bins_within_1e-3": float((every <= 1e-3).float().mean()),
        "frames": int(every.numel() // MEL_SPEC["n_mels"]),
    }
