"""What the swap buys inside Chatterbox, for ``python train/bench.py --chatterbox``.

Chatterbox's own ``S3Gen`` (chatterbox-tts, random weights: cost does not depend on the values)
makes a mel from speech tokens with its flow (``S3Gen.flow_inference``, 10 CFM steps as in
``ChatterboxTTS``, 2 as in the Turbo and meanflow models), then vocodes it with
``S3Gen.hift_inference``: HiFT as it ships, and each student put in its place with
:func:`vocos_distill.chatterbox.use_student`. Every figure is seconds of compute per second of
audio (median), on the same tokens and the same mel, vocoders timed in turn. S3Gen end to end is
the flow plus the vocoder, each timed as ``S3Gen.inference`` calls it. Peak memory: of a fresh
process that loads only the vocoder and vocodes the flow's mel once (CPU), or the peak CUDA
memory of that call (HiFT's: this project's HiFT, the same architecture, weight norm folded).
T3, the token model in front of S3Gen (a 0.5 B-parameter Llama), runs too when asked: random
weights, a fixed number of tokens, classifier-free guidance as Chatterbox runs it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from train.evaluation.cost import cuda_peak_mb, peak_rss_mb, runtime_bytes, stand_in_teacher
from train.s3gen.flow import speech_tokens
from vocos_distill.chatterbox import ChatterboxVocoder, as_vocoder
from vocos_distill.config import HOP_LENGTH, SAMPLE_RATE
from vocos_distill.loader import from_pretrained
from vocos_distill.timing import interleaved, time_call

TOKENS_PER_SECOND = 25  # S3 speech tokens (S3Gen makes 2 mel frames of each)
MIB = 1024 * 1024


def s3gen(device: str | torch.device = "cpu", seed: int = 0) -> Any:
    """Chatterbox's ``S3Gen`` with random weights, in eval mode (its HiFT at ``mel2wav``)."""
    from chatterbox.models.s3gen import S3Gen

    torch.manual_seed(seed)
    return S3Gen().to(device).eval().requires_grad_(False)


def reference(model: Any, seconds: float = 3.0, seed: int = 0) -> dict[str, Tensor]:
    """The speaker reference S3Gen conditions on (``S3Gen.embed_ref`` of a noise clip): its
    prompt tokens, prompt mel and x-vector, computed once so that every timing shares them."""
    generator = torch.Generator().manual_seed(seed)
    clip = 0.1 * torch.randn(1, int(seconds * SAMPLE_RATE), generator=generator)
    with torch.inference_mode():
        return model.embed_ref(clip.to(model.device), SAMPLE_RATE)


def tokens(seconds: float, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 6561, (1, max(1, round(seconds * TOKENS_PER_SECOND))), generator=generator)


def _memory_mb(vocoder: nn.Module, mel: Tensor) -> tuple[float | None, float | None]:
    """(peak MiB, of which the call itself added): CUDA memory allocated, or a fresh process's RSS.
    Chatterbox's HiFT cannot be pickled into that process (weight-norm parametrisations), so its
    figure is of this project's HiFT, the same architecture with its weight norm folded, as it runs."""
    if _parametrised(vocoder):
        vocoder = stand_in_teacher().to(mel.device)
    else:
        vocoder = Inference(vocoder)
    if mel.is_cuda:
        return cuda_peak_mb(vocoder, mel), None
    return peak_rss_mb(vocoder, mel.cpu())


def _parametrised(module: nn.Module) -> bool:
    return any(getattr(m, "parametrizations", None) for m in module.modules())


class Inference(nn.Module):
    """A vocoder at ``mel2wav`` called as S3Gen calls it (``inference(speech_feat)``)."""

    def __init__(self, vocoder: nn.Module) -> None:
        super().__init__()
        self.vocoder = vocoder

    def forward(self, mel: Tensor) -> Tensor:
        return self.vocoder.inference(speech_feat=mel)[0]


def _bytes(vocoder: nn.Module) -> int:
    """The weights as they run: fp32 tensors, or an ONNX student's file."""
    return runtime_bytes(vocoder.vocoder if isinstance(vocoder, ChatterboxVocoder) else vocoder)


def s3gen_rows(
    model: Any,
    students: Mapping[str, nn.Module],
    seconds: float = 10.0,
    cfm_steps: Sequence[int] = (10, 2),
    repeats: int = 3,
    memory: bool = True,
) -> list[dict[str, Any]]:
    """A row per CFM step count and vocoder (HiFT first, then ``students``: modules or what
    :func:`vocos_distill.from_pretrained` takes, already loaded), timed on ``model``'s
    own flow output for ``seconds`` of tokens."""
    sync = torch.cuda.synchronize if model.device.type == "cuda" else None
    ref, speech = reference(model), tokens(seconds).to(model.device)
    hift = model.mel2wav
    vocoders: dict[str, nn.Module] = {"HiFT (Chatterbox's own)": hift}
    for name, student in students.items():
        if isinstance(student, ChatterboxVocoder):
            vocoders[name] = student
        elif isinstance(student, nn.Module):
            vocoders[name] = ChatterboxVocoder(as_vocoder(student).to(model.device).eval(), name)
        else:
            vocoders[name] = ChatterboxVocoder(from_pretrained(student, device=model.device), str(student))
    rows = []
    for steps in cfm_steps:

        def flow(steps=steps):
            return model.flow_inference(speech, ref_dict=ref, n_cfm_timesteps=steps, finalize=True)

        flow_s = time_call(flow, repeats, sync)
        mel = flow()
        audio_s = mel.shape[-1] * HOP_LENGTH / SAMPLE_RATE
        calls = {}
        for name, vocoder in vocoders.items():

            def vocode(vocoder=vocoder, mel=mel):
                model.mel2wav = vocoder
                try:
                    return model.hift_inference(mel)
                finally:
                    model.mel2wav = hift

            calls[name] = vocode
        times = interleaved(calls, repeats, sync)
        for name, vocoder in vocoders.items():
            total = flow_s + times[name]
            peak, call = _memory_mb(vocoder, mel) if memory and steps == cfm_steps[0] else (None, None)
            rows.append(
                {
                    "cfm_steps": steps,
                    "vocoder": name,
                    "audio_s": audio_s,
                    "flow_s_per_s": flow_s / audio_s,
                    "vocoder_s_per_s": times[name] / audio_s,
                    "s3gen_s_per_s": total / audio_s,
                    "s3gen_change": total / (flow_s + times["HiFT (Chatterbox's own)"]) - 1.0,
                    "vocoder_share": times[name] / total,
                    "vocoder_mb": _bytes(vocoder) / MIB,
                    "peak_mb": peak,
                    "call_mb": call,
                }
            )
    return rows


def t3_row(seconds: float = 2.0, device: str | torch.device = "cpu", seed: int = 0) -> dict[str, Any]:
    """T3 (random weights) generating ``seconds`` of speech tokens for a 40-token text, as
    ``ChatterboxTTS.generate`` calls it (CFG weight 0.5, its sampling settings); it may stop early
    if it samples the stop token, so the rate is per token it made."""
    from chatterbox.models.t3 import T3
    from chatterbox.models.t3.modules.cond_enc import T3Cond

    torch.manual_seed(seed)
    t3 = T3().to(device).eval().requires_grad_(False)
    hp = t3.hp
    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(0, hp.text_tokens_dict_size, (1, 40), generator=generator).repeat(2, 1)
    text = nn.functional.pad(text, (1, 0), value=hp.start_text_token)
    text = nn.functional.pad(text, (0, 1), value=hp.stop_text_token)
    prompt = torch.randint(0, 6561, (1, hp.speech_cond_prompt_len), generator=generator)
    cond = T3Cond(
        speaker_emb=torch.randn(1, hp.speaker_embed_size, generator=generator),
        cond_prompt_speech_tokens=prompt,
        emotion_adv=0.5 * torch.ones(1, 1, 1),
    ).to(device=device)
    wanted = max(1, round(seconds * TOKENS_PER_SECOND))
    made: list[int] = []

    def generate():
        with torch.inference_mode():
            made.append(t3.inference(t3_cond=cond, text_tokens=text.to(device), max_new_tokens=wanted).shape[-1])

    elapsed = time_call(generate, 1, torch.cuda.synchronize if torch.device(device).type == "cuda" else None)
    count = made[-1]
    return {
        "params_m": sum(p.numel() for p in t3.parameters()) / 1e6,
        "tokens": count,
        "t3_s_per_s": elapsed / (count / TOKENS_PER_SECOND),
    }


# What an estimate of a GPU's flow-mel preparation assumes (labelled as such wherever it is shown)
GPU_SUSTAINED_TFLOPS = 20.0  # batch-1 kernels: about a third of an H100's fp32 peak, TF32 matmuls
GPU_KERNEL_S = 10e-6  # launch and scheduling per operator, which dominates small batch-1 kernels


class _OperatorCount(TorchDispatchMode):
    """Counts the aten operators a call runs: on a GPU, one kernel (at least) each."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def preparation_work(model: Any, seconds: float = 5.0, steps: int = 10) -> dict[str, float]:
    """FLOPs and operators of preparing one clip's flow mel and HiFT's target (tokenizer,
    speaker reference, the flow at ``steps``, HiFT), per second of audio, counted on this CPU;
    and the seconds a GPU would take under :data:`GPU_SUSTAINED_TFLOPS` and :data:`GPU_KERNEL_S`
    (an estimate, until a GPU measures it: ``.ci/gpu-check``)."""

    generator = torch.Generator().manual_seed(0)
    clip = 0.1 * torch.randn(int(seconds * SAMPLE_RATE), generator=generator)

    def work() -> None:
        with torch.inference_mode():
            speech = speech_tokens(model, clip)
            ref = model.embed_ref(clip[: 3 * SAMPLE_RATE].unsqueeze(0), SAMPLE_RATE)
            mel = model.flow_inference(speech, ref_dict=ref, n_cfm_timesteps=steps, finalize=True)
            model.hift_inference(mel)

    flops = FlopCounterMode(display=False)
    with flops:
        work()
    operators = _OperatorCount()
    with operators:
        work()
    total = flops.get_total_flops()
    gpu_s = total / (GPU_SUSTAINED_TFLOPS * 1e12) + operators.count * GPU_KERNEL_S
    return {
        "gflop_per_audio_s": total / 1e9 / seconds,
        "operators_per_clip": operators.count,
        "gpu_estimate_s_per_audio_s": gpu_s / seconds,
        "clip_seconds": seconds,
    }
