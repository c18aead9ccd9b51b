"""Training: the student generator against the teacher's (or the real) waveform, as a GAN.

Manual optimisation: a discriminator step, then a generator step, schedulers stepped by
hand. The discriminator steps through its raw optimizer so that ``trainer.global_step``
(and so ``trainer.max_steps``, checkpoints and schedules) counts generator updates only;
its schedule advances with its own updates (it starts after ``mel_only_steps``). During the
generator step the discriminators are frozen: their weight gradients would be discarded.
Precision: ``bf16-mixed`` or 32-bit. fp16 is refused: it needs a loss scaler for the raw
discriminator step and unscaled gradients before clipping, which this loop does not do.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from vocos.loss import DiscriminatorLoss, FeatureMatchingLoss, GeneratorLoss

from train.evaluation.metrics import QualityMetrics, pesq_wb
from train.student.model import build_student
from train.training.losses import (
    MultiResolutionMelLoss,
    MultiResolutionSTFTLoss,
    PhaseDerivativeLoss,
    S3GenMelDistance,
)
from vocos_distill.config import CONFIG_KEY, LOG_MEL_RANGE, SAMPLE_RATE, StudentConfig
from vocos_distill.errors import ConfigError

TARGETS = ("teacher", "audio", "parent")


def check_precision(precision: str | int) -> None:
    """Refuse fp16 (see the module docstring) with the option's name; bf16 and 32-bit are supported."""
    value = str(precision)
    if "16" in value and "bf16" not in value:
        raise PrecisionError(
            f"trainer.precision={value} is not supported: fp16 needs loss scaling that this GAN loop does not do. "
            "Use trainer.precision=bf16-mixed on a GPU (conf/trainer/gpu.yaml) or 32."
        )


class PrecisionError(ConfigError, ValueError):
    """A precision the training loop does not support."""


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.01) -> LambdaLR:
    """Linear warm-up to the base learning rate, then cosine decay to ``min_ratio`` of it."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


class VocoderDistillation(LightningModule):
    """Args:
    generator: the student (``mel (B, 80, T) -> wav (B, T * 480)``).
    discriminators: name -> module with vocos' interface ``d(y, y_hat) -> (real, fake, fmap_real,
        fmap_fake)``; ``None`` entries are dropped; none at all trains on reconstruction losses alone.
    optimizer_g, optimizer_d: partial optimizers taking parameters.
    scheduler: partial scheduler taking an optimizer (applied to both).
    target_weights: weight of each target in the reconstruction losses: ``teacher`` (HiFT's
        waveform, distillation), ``audio`` (ground truth, fine-tuning), ``parent`` (the output
        of ``parent``, the student a compression stage starts from) or a mix. The GAN's
        "real" signal is the target of larger weight.
    discriminator_weights: name -> weight of its adversarial and feature-matching losses; a
        discriminator not named (or ``None``: all) weighs 1.
    mel_only_steps: generator updates trained with reconstruction losses alone before the
        discriminators join.
    val_pesq: validation also scores PESQ-wb against the training target (``val/pesq_wb``).
    floor: a non-neural vocoder (``train.evaluation.griffin_lim.GriffinLim``) scored once on the
        validation set, its figures logged beside the student's at every validation
        (``val/floor_mel_distance``, ``val/floor_pesq_wb``): the line a run must cross.
    freeze_discriminators: no weight gradients for the discriminators in the generator step
        (they would be discarded). ``False`` only to measure what that saves
        (``python train/bench.py --train-compare module.freeze_discriminators=false``).
    """

    def __init__(
        self,
        generator: nn.Module,
        optimizer_g: Callable[..., Optimizer],
        *,
        target_weights: Mapping[str, float],
        optimizer_d: Callable[..., Optimizer] | None = None,
        scheduler: Callable[[Optimizer], LambdaLR] | None = None,
        discriminators: Mapping[str, nn.Module] | None = None,
        mel_loss_weight: float = 45.0,
        stft_loss_weight: float = 0.0,
        s3gen_mel_loss_weight: float = 0.0,
        phase_loss_weight: float = 0.0,
        adversarial_weight: float = 1.0,
        feature_matching_weight: float = 1.0,
        discriminator_weights: Mapping[str, float] | None = None,
        mel_only_steps: int = 0,
        freeze_discriminators: bool = True,
        grad_clip: float = 1000.0,
        num_logged_audio: int = 2,
        val_pesq: bool = True,
        floor: nn.Module | None = None,
        parent: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        # plain dicts, so checkpoints load with torch.load(weights_only=True)
        target_weights = {k: float(v) for k, v in target_weights.items()}
        discriminator_weights = {k: float(v) for k, v in (discriminator_weights or {}).items()}
        self.save_hyperparameters(
            ignore=["generator", "discriminators", "optimizer_g", "optimizer_d", "scheduler", "parent", "floor"]
        )
        self.generator = generator
        self.discriminators = nn.ModuleDict({k: v for k, v in (discriminators or {}).items() if v is not None})
        if self.discriminators and optimizer_d is None:
            raise ValueError("module.optimizer_d is required when module.discriminators is set")
        if set(target_weights) - set(TARGETS) or not any(target_weights.values()):
            raise ValueError(f"module.target_weights: use keys {TARGETS} with a positive weight; got {target_weights}")
        self.target_weights = {k: v for k, v in target_weights.items() if v}
        if "parent" in self.target_weights and parent is None:
            raise ConfigError(
                "module.target_weights.parent needs the parent student: a compression stage "
                "(compress=prune|qat|lookahead) with student.init_from=<a student file> provides it"
            )
        # not a submodule: frozen, never saved in checkpoints, never wrapped by DDP
        self.__dict__["parent"] = None if parent is None else parent.eval().requires_grad_(False)
        self.real_target = max(self.target_weights, key=self.target_weights.get)
        self.optimizer_g = optimizer_g
        self.optimizer_d = optimizer_d
        self.scheduler = scheduler
        self.mel_loss = MultiResolutionMelLoss()
        self.stft_loss = MultiResolutionSTFTLoss()
        self.phase_loss = PhaseDerivativeLoss()
        self.mel_distance = S3GenMelDistance()
        self.disc_loss = DiscriminatorLoss()
        self.gen_loss = GeneratorLoss()
        self.fm_loss = FeatureMatchingLoss()
        self.disc_weights = discriminator_weights
        # not submodules: the floor has no weights to train or save
        self.__dict__["floor"] = floor
        self._floor_scores: dict[int, dict[str, float]] = {}
        self._metrics = QualityMetrics(naturalness=None, speaker=None) if val_pesq else None
        # scores that may be undefined (NaN) for a clip, averaged over the finite ones at epoch end
        self._score_keys = (["pesq_wb"] if val_pesq else []) + (
            ["floor_mel_distance"] + (["floor_pesq_wb"] if val_pesq else []) if floor is not None else []
        )
        self._scores: dict[str, list[float]] = {}

    # -- optimisation -------------------------------------------------------------
    def configure_optimizers(self):
        optimizers = [self.optimizer_g(self.generator.parameters())]
        if self.discriminators:
            optimizers.append(self.optimizer_d(self.discriminators.parameters()))
        if self.scheduler is None:
            return optimizers
        return optimizers, [{"scheduler": self.scheduler(opt), "interval": "step"} for opt in optimizers]

    def targets(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if "parent" in self.target_weights and "parent" not in batch:
            batch = {**batch, "parent": self.parent_output(batch["mel"])}
        missing = [name for name in self.target_weights if name not in batch]
        if missing:
            raise ValueError(
                f"module.target_weights needs {missing} targets but the data provides {sorted(batch)}; "
                "`teacher` targets need a teacher (`teacher=hift`), `audio` targets need audio"
            )
        return {name: batch[name] for name in self.target_weights}

    @torch.no_grad()
    def parent_output(self, mel: Tensor) -> Tensor:
        """The parent student's waveform for ``mel`` (computed on the fly: it is cheap)."""
        if next(self.parent.parameters()).device != mel.device:
            self.parent.to(mel.device)
        return self.parent(mel)

    def reconstruction_loss(self, y_hat: Tensor, targets: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        total, parts = y_hat.new_zeros((), dtype=torch.float32), {}
        for name, y in targets.items():
            weight = self.target_weights[name]
            mel = self.mel_loss(y_hat, y)
            parts[f"mel_{name}"] = mel
            total = total + weight * self.hparams.mel_loss_weight * mel
            for term, loss_fn in (
                ("stft", self.stft_loss),
                ("s3gen_mel", self.mel_distance),
                ("phase", self.phase_loss),
            ):
                term_weight = self.hparams[f"{term}_loss_weight"]
                if term_weight:
                    value = loss_fn(y_hat, y)
                    parts[f"{term}_{name}"] = value
                    total = total + weight * term_weight * value
        return total, parts

    def gan_active(self) -> bool:
        return bool(self.discriminators) and self.global_step >= self.hparams.mel_only_steps

    def discriminator_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        """Hinge loss of every discriminator, averaged over its sub-discriminators, weighted."""
        total = real.new_zeros(())
        for name, disc in self.discriminators.items():
            real_scores, fake_scores, _, _ = disc(y=real, y_hat=fake)
            loss, _, _ = self.disc_loss(real_scores, fake_scores)
            total = total + self.disc_weights.get(name, 1.0) * loss.squeeze() / len(real_scores)
        return total

    def adversarial_loss(self, real: Tensor, y_hat: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The generator's adversarial and feature-matching losses, as Vocos weights them: each
        averaged over its discriminator's sub-discriminators, then weighted per discriminator."""
        total, parts = real.new_zeros(()), {}
        for name, disc in self.discriminators.items():
            _, fake_scores, fmap_real, fmap_fake = disc(y=real, y_hat=y_hat)
            adversarial, _ = self.gen_loss(fake_scores)
            matching = self.fm_loss(fmap_real, fmap_fake)
            total = total + self.disc_weights.get(name, 1.0) * (
                self.hparams.adversarial_weight * adversarial.squeeze() / len(fake_scores)
                + self.hparams.feature_matching_weight * matching.squeeze() / len(fmap_real)
            )
            parts[f"adv_{name}"] = adversarial.detach().squeeze()
            parts[f"fm_{name}"] = matching.detach().squeeze()
        return total, parts

    def clip_finite(self, parameters: Iterable[nn.Parameter], whose: str, terms: Mapping[str, Tensor]) -> None:
        """Clip the gradient's norm to ``grad_clip``; a non-finite norm stops training before the
        step applies it, so no checkpoint ever holds NaN weights (the last one saved is kept)."""
        norm = torch.nn.utils.clip_grad_norm_(parameters, self.hparams.grad_clip)
        if not torch.isfinite(norm):
            values = ", ".join(f"{name} {float(value):.4g}" for name, value in terms.items())
            raise FloatingPointError(
                f"step {self.global_step}: the {whose} gradient is not finite ({values}); nothing was applied, "
                "and the last checkpoint holds the weights before it. A loss term whose weight was just raised "
                "(module.*_loss_weight), or a learning rate too high (module.optimizer_g.lr), is the usual cause"
            )

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        schedulers = self.lr_schedulers() or []
        opt_g = optimizers[0]
        targets = self.targets(batch)
        real = targets[self.real_target]
        y_hat = self.generator(batch["mel"])
        logs: dict[str, Tensor] = {}
        gan = self.gan_active()

        if gan:
            opt_d = optimizers[1]
            loss_d = self.discriminator_loss(real, y_hat.detach())
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(loss_d)
            self.clip_finite(self.discriminators.parameters(), "discriminators'", {"loss_d": loss_d})
            opt_d.optimizer.step()  # raw step: global_step counts generator updates only
            if len(schedulers) > 1:
                schedulers[1].step()
            logs["train/loss_d"] = loss_d.detach()

        loss_g, parts = self.reconstruction_loss(y_hat, targets)
        freeze = gan and self.hparams.freeze_discriminators
        if freeze:
            self.discriminators.requires_grad_(False)  # gradients flow through them to the generator only
        if gan:
            adversarial, adversarial_parts = self.adversarial_loss(real, y_hat)
            loss_g = loss_g + adversarial
            parts.update(adversarial_parts)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss_g)
        if freeze:
            self.discriminators.requires_grad_(True)
        self.clip_finite(self.generator.parameters(), "generator's", {"loss_g": loss_g, **parts})
        logs["train/lr"] = torch.tensor(opt_g.param_groups[0]["lr"])  # the rate this update used
        opt_g.step()
        if schedulers:
            schedulers[0].step()

        logs.update({f"train/{k}": v.detach() for k, v in parts.items()})
        self.log_dict(logs, prog_bar=False, on_step=True, on_epoch=False, batch_size=real.shape[0])
        progress = {"train/loss_g": loss_g.detach(), "train/mel": parts[f"mel_{self.real_target}"].detach()}
        self.log_dict(progress, prog_bar=True, on_step=True, on_epoch=False, batch_size=real.shape[0])

    def setup(self, stage: str) -> None:
        check_precision(self.trainer.precision)  # for trainers built outside train.training.fit

    def lr_schedulers(self) -> list[Any] | None:  # a list even for one scheduler
        schedulers = super().lr_schedulers()
        return [schedulers] if schedulers is not None and not isinstance(schedulers, list) else schedulers

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record how to rebuild the student (``build_student`` arguments) beside its weights."""
        checkpoint[CONFIG_KEY] = self.generator.config.to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Before a resumed run's weights load: rebuild the student in the shape the checkpoint
        records when it differs (a run resumed after a pruning step, ``compress=prune``)."""
        config = checkpoint.get(CONFIG_KEY)
        if config and StudentConfig.from_dict(dict(config), CONFIG_KEY) != self.generator.config:
            device = next(self.generator.parameters()).device
            self.generator = build_student(**config).to(device)

    # -- validation ----------------------------------------------------------------
    def on_train_start(self) -> None:
        self._fit_started = time.monotonic()

    def on_validation_epoch_start(self) -> None:
        self._scores = {key: [] for key in self._score_keys}

    def on_validation_epoch_end(self) -> None:
        """The means of the scores over the clips where they are defined, across all processes
        (every process logs every key, so none waits on another); and ``val/minutes``: wall-clock
        time since training started (validation included), the axis of a time budget (``trainer.max_time``)."""
        for key in self._score_keys:
            values = torch.tensor([v for v in self._scores.get(key, []) if math.isfinite(v)], dtype=torch.float64)
            total = torch.stack([values.sum(), torch.tensor(float(values.numel()), dtype=torch.float64)])
            total = self.all_gather(total.to(self.device)).reshape(-1, 2).sum(dim=0)
            if total[1] > 0:
                self.log(f"val/{key}", float(total[0] / total[1]), sync_dist=False)
        started = getattr(self, "_fit_started", None)
        if started is not None and not self.trainer.sanity_checking:
            self.log("val/minutes", (time.monotonic() - started) / 60, sync_dist=False)

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        y_hat = self.generator(batch["mel"])
        targets = self.targets(batch)
        for name, y in targets.items():
            distance = self.mel_distance(y_hat, y)
            self.log(f"val/mel_distance_{name}", distance, sync_dist=True, batch_size=1)
            self.log(f"val/stft_distance_{name}", self.stft_loss(y_hat, y), sync_dist=True, batch_size=1)
            if name == self.real_target:  # the one number checkpoints are ranked by
                self.log("val/mel_distance", distance, sync_dist=True, batch_size=1)
        real = targets[self.real_target]
        scores = {"pesq_wb": self.pesq(y_hat, real)} if self._metrics is not None else {}
        if self.floor is not None:
            scores.update({f"floor_{k}": v for k, v in self.floor_scores(batch_idx, batch["mel"], real).items()})
        for key, value in scores.items():
            self._scores.setdefault(key, []).append(value)  # PESQ is NaN on silence: left out of the mean
        if batch_idx < self.hparams.num_logged_audio:
            self.log_media(batch_idx, batch["mel"], y_hat, targets[self.real_target])

    def pesq(self, y_hat: Tensor, y: Tensor) -> float:
        """PESQ-wb of the first item of a validation batch (NaN where PESQ is undefined)."""
        estimate, reference = self._metrics.analyse(y_hat[0].float()), self._metrics.analyse(y[0].float())
        return self._metrics.safely("pesq_wb", "validation", lambda: pesq_wb(estimate, reference))

    @torch.no_grad()
    def floor_scores(self, batch_idx: int, mel: Tensor, real: Tensor) -> dict[str, float]:
        """The floor's scores on validation batch ``batch_idx``: computed on the first
        validation, reused after (the validation batches are the same every time)."""
        if batch_idx not in self._floor_scores:
            wav = self.floor.to(mel.device)(mel)
            scores = {"mel_distance": float(self.mel_distance(wav, real))}
            if self._metrics is not None:
                scores["pesq_wb"] = self.pesq(wav, real)
            self._floor_scores[batch_idx] = scores
        return self._floor_scores[batch_idx]

    def log_media(self, index: int, mel: Tensor, y_hat: Tensor, target: Tensor) -> None:
        """Audio pair and a mel-spectrogram comparison, for loggers that take media (W&B)."""
        if not isinstance(self.logger, WandbLogger) or self.trainer.sanity_checking:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        student_mel = self.mel_distance.mel(y_hat.float())[0].cpu()
        target_mel = self.mel_distance.mel(target.float())[0].cpu()
        fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
        for ax, spec, title in zip(axes, (target_mel, student_mel), (self.real_target, "student"), strict=True):
            ax.imshow(spec.numpy(), origin="lower", aspect="auto", vmin=LOG_MEL_RANGE[0], vmax=LOG_MEL_RANGE[1])
            ax.set_title(title)
        fig.tight_layout()
        step = self.global_step
        self.logger.log_image(f"val/mel_{index}", [fig], step=step)
        plt.close(fig)
        audios = [target[0].float().cpu().numpy(), y_hat[0].float().cpu().numpy()]
        self.logger.log_audio(
            f"val/audio_{index}",
            audios,
            step=step,
            sample_rate=[SAMPLE_RATE] * 2,
            caption=[self.real_target, "student"],
        )
