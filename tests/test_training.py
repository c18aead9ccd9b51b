import os
import subprocess
import sys

import pytest
import torch
from helpers import (
    CONF,
    REPO,
    TINY_STUDENT,
    compose,
    save_ckpt,
    small_config,
    student,
    wandb_logged,
    write_clips,
    write_s3gen_checkpoint,
)

from train.s3gen.hift import HiFTGenerator
from train.training.fit import build, fit
from vocos_distill.errors import ConfigError
from vocos_distill.hub import WeightsUnavailableError

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.fixture
def clips(tmp_path):
    return write_clips(tmp_path / "clips")


@pytest.fixture
def teacher_ckpt(tmp_path):
    torch.manual_seed(0)
    return write_s3gen_checkpoint(tmp_path / "s3gen.safetensors", HiFTGenerator(**small_config()))


def data_overrides(clips) -> list[str]:
    return [
        f"data.audio_dirs=[{clips}]",
        "data.val_dirs=[]",
        "data.mel_source=audio",  # the stand-in checkpoints hold HiFT alone: no flow to make flow mels
        "data.segment_frames=8",
        "data.batch_size=2",
        "data.val_max_frames=50",
    ]


def local_overrides(clips, teacher_ckpt) -> list[str]:
    return [*data_overrides(clips), f"teacher.checkpoint={teacher_ckpt}", "teacher.device=cpu", "logger=csv"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(experiment, tmp_path, clips, teacher_ckpt):
    overrides = [
        f"experiment={experiment}",
        *data_overrides(clips),
        "logger=csv",
        "student.init_from=null",
        "trainer.accelerator=cpu",
        "trainer.precision=32",
    ]
    cfg = compose(overrides, tmp_path)
    if cfg.get("teacher"):
        overrides += [f"teacher.checkpoint={teacher_ckpt}", "teacher.device=cpu"]
        cfg = compose(overrides, tmp_path)
    if cfg.get("continues_student"):  # a stage on a trained student: refused without one
        with pytest.raises(
            ConfigError,
            match=r"goes on from a trained student \(continues_student: true\), and student.init_from=None is not",
        ):
            build(cfg)
        save_ckpt(student(), tmp_path / "trained.ckpt")
        cfg = compose([*overrides, f"student.init_from={tmp_path / 'trained.ckpt'}"], tmp_path)
    datamodule, module, trainer = build(cfg)
    assert (datamodule.teacher is None) == (cfg.get("teacher") is None)
    assert trainer.max_steps == cfg.trainer.max_steps


def test_distill_offline_stops_before_training_with_the_ways_out(tmp_path, clips, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = compose(["experiment=distill", *data_overrides(clips), f"teacher.cache_dir={tmp_path / 'hf'}"], tmp_path)
    with pytest.raises(WeightsUnavailableError) as err:
        build(cfg)
    for option in ("teacher.checkpoint=", "student.init_from=null", "experiment=finetune"):
        assert option in str(err.value)


@pytest.mark.slow
def test_distill_runs_end_to_end_from_a_chatterbox_checkpoint(tmp_path, clips, teacher_ckpt):
    cfg = compose(
        [
            "experiment=distill",
            *local_overrides(clips, teacher_ckpt),
            *TINY_STUDENT,
            "student.init_from=null",
            "trainer=cpu",
            "trainer.precision=32",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "module.mel_only_steps=1",
            "data.num_workers=0",
        ],
        tmp_path,
    )
    metrics = fit(cfg)
    final = metrics["final"]
    assert "train/loss_d" in final and "train/adv_mpd" in final and "train/adv_mrd" in final  # GAN after step 1
    assert final["val/mel_distance_teacher"] > 0
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "checkpoints" / "cache" / "teacher").rglob("*.pt"))


def test_finetune_runs_a_few_steps(tmp_path, clips):
    cfg = compose(
        [
            "experiment=finetune",
            *data_overrides(clips),
            *TINY_STUDENT,
            "logger=csv",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
        ],
        tmp_path,
    )
    metrics = fit(cfg)
    assert metrics["initial"]["val/mel_distance_audio"] > 0
    assert "val/mel_distance_audio" in metrics["final"]
    # the Griffin-Lim floor is scored once and shown beside every validation, and PESQ-wb with it
    initial, final = metrics["initial"], metrics["final"]
    assert 0 < initial["val/floor_mel_distance"] == final["val/floor_mel_distance"] < initial["val/mel_distance"]
    assert initial["val/floor_pesq_wb"] == final["val/floor_pesq_wb"]
    assert "val/pesq_wb" in final and final["val/minutes"] > 0


def tiny_run(tmp_path, clips, name, *extra):
    return compose(
        [
            "experiment=tiny",
            "~teacher",
            "module.target_weights={teacher:0,audio:1}",
            *data_overrides(clips),
            "data.batch_size=1",
            f"paths.output_dir={tmp_path / name}",
            "validate_first=false",
            *extra,
        ],
        tmp_path,
    )


@pytest.mark.slow
def test_resume_continues_with_step_count_and_optimizer_state(tmp_path, clips):
    """4 steps, stop, resume to 8 == 8 straight steps (same 8-step schedule, as for an interrupted run)."""
    schedule = "module.scheduler.total_steps=8"
    fit(tiny_run(tmp_path, clips, "straight", "trainer.max_steps=8", schedule))
    fit(tiny_run(tmp_path, clips, "first", "trainer.max_steps=4", schedule))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resumed = tiny_run(tmp_path, clips, "resumed", "trainer.max_steps=8", schedule, f"ckpt_path={last}")
    fit(resumed)
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 8
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for state_a, state_b in zip(opt_a["state"].values(), opt_b["state"].values(), strict=True):
            for key in ("step", "exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(state_a[key], state_b[key])
    assert a["lr_schedulers"] == b["lr_schedulers"]
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(value, b["state_dict"][key])


@pytest.mark.slow
def test_tiny_student_overfits_one_clip(tmp_path):
    """Learning really happens: S3Gen mel distance on one clip falls from > 1.5 to < 0.6 within 150 steps."""
    clip = write_clips(tmp_path / "one", count=1, seconds=0.5)
    cfg = compose(
        [
            "experiment=tiny",
            "~teacher",
            "module.target_weights={teacher:0,audio:1}",
            "module.discriminators=null",
            f"data.audio_dirs=[{clip}]",
            "data.segment_frames=25",
            "data.batch_size=1",
            "student.dim=64",
            "student.intermediate_dim=128",
            "student.num_layers=2",
            "trainer.max_steps=150",
            "trainer.val_check_interval=150",
            "module.scheduler.warmup_steps=10",
            "module.optimizer_g.lr=2e-3",
            "callbacks.checkpoints=null",
        ],
        tmp_path,
    )
    metrics = fit(cfg)
    before, after = metrics["initial"]["val/mel_distance_audio"], metrics["final"]["val/mel_distance_audio"]
    assert before > 1.5
    assert after < 0.6, (before, after)


@pytest.mark.slow
def test_wandb_offline_run_holds_scalars_and_audio(tmp_path, clips, wandb_offline):
    cfg = tiny_run(tmp_path, clips, "wb", "logger=wandb", "trainer.max_steps=2", "trainer.val_check_interval=2")
    fit(cfg)
    import wandb

    wandb.finish()
    runs = list((tmp_path / "wb").rglob("offline-run-*"))
    assert len(runs) == 1
    logged = wandb_logged(next(runs[0].glob("run-*.wandb")), ("train/loss_g", "val/mel_distance_audio"))
    assert logged["train/loss_g"] > 0 and logged["val/mel_distance_audio"] > 0
    assert logged["val/audio_0/captions"] == ["audio", "student"]
    assert list((runs[0] / "files" / "media" / "audio").rglob("*.wav"))
    assert list((runs[0] / "files" / "media" / "images").rglob("*.png"))
    assert not (REPO / "wandb").exists()


@pytest.mark.slow
def test_two_runs_in_one_process_log_to_two_wandb_runs(tmp_path, clips, wandb_offline):
    """Hydra's multirun launches its jobs one after another in one process: each fit finishes the
    W&B run it began, so that the next job's WandbLogger starts a run of its own instead of finding
    the last one open and logging into it."""
    import wandb

    for name in ("one", "two"):
        fit(tiny_run(tmp_path, clips, name, "logger=wandb", "trainer.max_steps=2", "trainer.val_check_interval=2"))
        assert wandb.run is None, f"fit left the W&B run of {name} open"
    for name in ("one", "two"):
        (run,) = (tmp_path / name).rglob("offline-run-*")
        assert wandb_logged(next(run.glob("run-*.wandb")), ("train/loss_g",))["train/loss_g"] > 0


@pytest.mark.slow
def test_two_process_ddp_on_cpu_prepares_in_shares(tmp_path, clips, teacher_ckpt):
    """`trainer=ddp_cpu`: two gloo processes launched by Lightning from the real entry point; each
    synthesises its own share of the teacher's waveforms, and together all of them."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        str(REPO / "train" / "fit.py"),
        "experiment=tiny",
        "trainer=ddp_cpu",
        f"teacher.checkpoint={teacher_ckpt}",
        *data_overrides(clips),
        "data.batch_size=1",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        f"paths.log_dir={tmp_path / 'checkpoints'}",
        f"hydra.run.dir={out}",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "share 1/2: 3 utterances computed" in output and "share 2/2: 2 utterances computed" in output
    assert len(list((tmp_path / "checkpoints" / "cache" / "teacher").rglob("*.pt"))) == 5
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4


# -- defect: fp16 silently broke the GAN ---------------------------------------------------------
@pytest.mark.parametrize("precision", ["16-mixed", "16-true", "16"])
def test_fp16_is_refused_before_anything_runs(tmp_path, clips, precision):
    cfg = tiny_run(tmp_path, clips, "fp16", f"trainer.precision={precision}")
    with pytest.raises(ValueError, match=rf"trainer\.precision={precision}.*bf16-mixed"):
        build(cfg)


# -- defect: a non-finite gradient was applied, and the NaN weights overwrote last.ckpt ----------
def test_a_non_finite_gradient_stops_training_before_it_reaches_the_weights(tmp_path, clips, monkeypatch):
    """A pilot's phase loss gave NaN gradients at step ~3,400 while its loss stayed finite: it
    trained on for 600 steps, saved NaN weights as last.ckpt and died in validation with an error
    about the waveform. The step must stop, naming the step and the loss terms, and last.ckpt
    must keep the last finite weights."""
    from train.training.module import VocoderDistillation

    original = VocoderDistillation.reconstruction_loss

    def poisoned(self, y_hat, targets):
        total, parts = original(self, y_hat, targets)
        if self.global_step >= 2:  # finite value (0), NaN gradient (inf * 0)
            total = total + (0 * y_hat).square().sum().sqrt()
        return total, parts

    monkeypatch.setattr(VocoderDistillation, "reconstruction_loss", poisoned)
    cfg = tiny_run(
        tmp_path,
        clips,
        "nan",
        "trainer.max_steps=5",
        "callbacks.checkpoints.every_n_train_steps=1",
        "trainer.val_check_interval=5",
    )
    with pytest.raises(FloatingPointError, match=r"step 2: the generator's gradient is not finite.*mel_audio"):
        fit(cfg)
    saved = torch.load(tmp_path / "nan" / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())


# -- defect: the generator step computed the discriminators' weight gradients ---------------------
@pytest.mark.slow
@pytest.mark.parametrize(("freeze", "per_step"), [(True, 1), (False, 2)])
def test_the_generator_step_computes_no_discriminator_weight_gradients(tmp_path, clips, freeze, per_step):
    """Frozen: one weight gradient per step (the discriminator's own step). Not frozen (only for
    measuring what freezing saves): the generator step computes one more, still with its GAN losses."""
    cfg = tiny_run(
        tmp_path,
        clips,
        "frozen",
        "trainer.max_steps=3",
        "module.mel_only_steps=0",
        f"module.freeze_discriminators={freeze}",
    )
    datamodule, module, trainer = build(cfg)
    grads = {}
    for name, disc in module.discriminators.items():
        for index, param in enumerate(disc.parameters()):
            param.register_hook(lambda g, key=(name, index): grads.__setitem__(key, grads.get(key, 0) + 1))
    trainer.fit(module, datamodule=datamodule)
    assert grads and set(grads.values()) == {3 * per_step}
    assert "train/adv_mrd" in trainer.callback_metrics and "train/fm_mrd" in trainer.callback_metrics


# -- defect: loss weights off the recipe without a reason -----------------------------------------
def test_adversarial_losses_are_weighted_as_vocos_weights_them(tmp_path):
    """Vocos: adversarial and feature-matching losses averaged over each discriminator's
    sub-discriminators, weight 1 for MPD and the MRD coefficient for MRD."""
    from vocos.loss import FeatureMatchingLoss, GeneratorLoss

    from train.student.model import build_student
    from train.utils.instantiate import instantiate

    cfg = compose([], tmp_path)
    module = instantiate(cfg.module, generator=build_student(dim=32, intermediate_dim=64, num_layers=1))
    torch.manual_seed(0)
    y, y_hat = torch.randn(2, 9600), torch.randn(2, 9600)
    total, _ = module.adversarial_loss(y, y_hat)
    expected = 0.0
    assert cfg.module.discriminator_weights is None  # each discriminator weighs 1 (the signature's rule)
    for name, coefficient in (("mpd", 1.0), ("mrd", 1.0)):
        _, fake, fmap_real, fmap_fake = module.discriminators[name](y=y, y_hat=y_hat)
        adversarial, _ = GeneratorLoss()(fake)
        expected += coefficient * (
            adversarial / len(fake) + FeatureMatchingLoss()(fmap_real, fmap_fake) / len(fmap_real)
        )
    torch.testing.assert_close(total, expected.squeeze())
