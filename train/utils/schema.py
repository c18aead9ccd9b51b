"""Typed schemas of the config groups whose values users override most: trainer, data, module, student.

Each group's base YAML extends its schema (``defaults: [/schema/<group>@_here_, _self_]``),
so Hydra itself rejects ``trainer.max_steps=abc`` with the key and the expected type, before
anything runs. Options a schema does not list can still be added with ``+group.key=value``.
Values that may be of several types (``devices: 1`` or ``[0, 1]``) are ``Any``.

A default is written here and in the group's YAML alike (a user reads it there), and equals the
target's own signature default: ``tests/test_config.py`` compares the three. Fields that the YAML
fills with a config node (optimizers, discriminators, plugins) have no default here (``MISSING``).
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class TrainerSchema:
    """``lightning.pytorch.Trainer`` arguments this project uses."""

    _target_: str = "lightning.pytorch.Trainer"
    default_root_dir: str = MISSING
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: Any = "auto"
    precision: str = "32"
    max_steps: int = 100_000
    max_time: str | None = None  # "DD:HH:MM:SS": stop after this much wall-clock time
    val_check_interval: Any = 1000
    check_val_every_n_epoch: int | None = None
    limit_val_batches: Any = None
    log_every_n_steps: int = 50
    num_sanity_val_steps: int = 0
    deterministic: bool = False
    benchmark: bool | None = None
    enable_progress_bar: bool = True
    enable_model_summary: bool = True
    plugins: Any = MISSING  # conf/trainer/default.yaml: the safe checkpoint IO


@dataclass
class DataSchema:
    """``train.data.datamodule.VocoderDataModule`` arguments."""

    _target_: str = "train.data.datamodule.VocoderDataModule"
    audio_dirs: list[str] = field(default_factory=list)
    mel_dir: str | None = None
    paired_audio_dir: str | None = None
    cache_dir: str = MISSING
    teacher_seed: int = 0
    segment_frames: int = 32
    speed_perturb: list[float] | None = None
    tilt_db: list[float] | None = None
    batch_size: int = 4
    val_dirs: list[str] = field(default_factory=list)
    val_fraction: float = 0.2
    val_max_utterances: int | None = 100
    val_max_frames: int = 250
    num_workers: int = 0
    seed: int = 0
    progress: bool = False


@dataclass
class ModuleSchema:
    """``train.training.module.VocoderDistillation`` arguments; optimizers and discriminators are config nodes."""

    _target_: str = "train.training.module.VocoderDistillation"
    target_weights: dict[str, float] = field(default_factory=lambda: {"teacher": 1.0, "audio": 0.0})
    mel_loss_weight: float = 45.0
    stft_loss_weight: float = 0.0
    s3gen_mel_loss_weight: float = 0.0
    phase_loss_weight: float = 0.0
    adversarial_weight: float = 1.0
    feature_matching_weight: float = 1.0
    discriminator_weights: dict[str, float] = field(default_factory=lambda: {"mpd": 1.0, "mrd": 1.0})
    mel_only_steps: int = 0
    freeze_discriminators: bool = True
    grad_clip: float = 1000.0
    num_logged_audio: int = 2
    val_pesq: bool = True
    floor: Any = MISSING
    discriminators: dict[str, Any] | None = MISSING
    optimizer_g: Any = MISSING
    optimizer_d: Any = MISSING
    scheduler: Any = MISSING


@dataclass
class StudentSchema:
    """``train.student.model.build_student`` arguments."""

    _target_: str = "train.student.model.build_student"
    input_channels: int = 80
    dim: int = 512
    intermediate_dim: int = 1536
    num_layers: int = 8
    n_fft: int = 1920
    hop_length: int = 480
    init_from: str | None = None
    local_files_only: bool = False
    fake_quant: str | None = None
    amplitude_prior: bool = False
    lookahead: int | None = None


def register() -> None:
    store = ConfigStore.instance()
    for name, node in (
        ("trainer", TrainerSchema),
        ("data", DataSchema),
        ("module", ModuleSchema),
        ("student", StudentSchema),
    ):
        store.store(group="schema", name=name, node=node)
