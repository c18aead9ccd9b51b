"""The release's model card (``README.md``), written from measurements only.

The YAML header is huggingface_hub's ``ModelCardData``: licence, base models, tags and a
``model-index`` whose results are the evaluation report's means, each with its 95 % interval,
count and the data it was measured on. The body repeats them as tables beside the cost table
that ``train/export.py`` measured (teacher and the release's files, one run), states how the
model was made and compressed, and ends with usage for ``vocos`` and ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from train.evaluation.report import listening_lines, mel_words
from train.utils.tables import format_stat, table
from vocos_distill.config import StudentConfig

# (metric, comparison) pairs the card reports; the list, in this order
CARD_METRICS = ("pesq_wb", "stoi", "mel_distance_db", "f0_rmse_cents", "vuv_f1", "dnsmos_ovrl_drop")
COMPARISONS = {
    "student_vs_teacher": "vs the teacher (HiFT)",
    "student_vs_audio": "vs the ground truth",
    "student_vs_parent": "vs the uncompressed parent",
}
METRIC_NAMES = {
    "pesq_wb": "PESQ-wb",
    "stoi": "STOI",
    "mel_distance_db": "log-mel distance (dB)",
    "f0_rmse_cents": "F0 RMSE (cents)",
    "vuv_f1": "V/UV F1",
    "dnsmos_ovrl_drop": "DNSMOS OVRL drop",
}
TASK = ("text-to-speech", "vocoder: S3Gen log-mel to 24 kHz waveform")


def eval_results(report: Mapping[str, Any]) -> list[EvalResult]:
    """One ``EvalResult`` per reported (comparison, metric) with a finite mean; the interval and
    count go into ``metric_args``, the comparison into ``metric_config``."""
    data = report["data"]
    dataset = f"{', '.join(_source_name(s) for s in data['sources'])} ({data['split']} split)"
    results = []
    for comparison in COMPARISONS:
        for metric in CARD_METRICS:
            stat = report["summary"].get(comparison, {}).get(metric)
            if not stat or stat.get("mean") is None:
                continue
            low, high = stat.get("ci95") or (None, None)
            results.append(
                EvalResult(
                    task_type=TASK[0],
                    task_name=TASK[1],
                    dataset_type="custom",
                    dataset_name=dataset,
                    dataset_split=data["split"],
                    dataset_args={"utterances": data["utterances"], "seconds": round(data["seconds"], 2)},
                    metric_type=metric,
                    metric_name=f"{METRIC_NAMES[metric]} {COMPARISONS[comparison]}",
                    metric_config=comparison,
                    metric_value=round(float(stat["mean"]), 4),
                    metric_args={"ci95": [_round(low), _round(high)], "n": stat.get("n")},
                )
            )
    return results


def _round(value: Any) -> Any:
    return None if value is None else round(float(value), 4)


def _source_name(path: str) -> str:
    parts = str(path).rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) > 1 else parts[0]


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 1024:.0f} KiB"


def listening_section(report: Mapping[str, Any] | None) -> str:
    """What listeners said, from the report's ``listening`` section, or that nobody has listened yet."""
    section = (report or {}).get("listening")
    if not section:
        return ("No listening test yet: the figures above are signal metrics and MOS predictors, "
                "not listeners.\n")  # fmt: skip
    return "\n".join(listening_lines(section)[2:]) + "\n"


def quality_section(report: Mapping[str, Any] | None) -> str:
    if report is None:
        return "Not evaluated: this release was exported without an evaluation report (`report=`).\n"
    data = report["data"]
    lines = [
        f"`train/evaluate.py` of `{Path(report['checkpoint']['path']).name}` on {data['utterances']} utterances "
        f"({data['seconds']:.1f} s) of the "
        f"{data['split']} split of {', '.join(f'`{_source_name(s)}`' for s in data['sources'])} "
        f"({mel_words(data)}); "
        "mean [95 % interval] per utterance. "
        f"Teacher: {report['teacher'].get('status')}"
        + (f" ({report['teacher']['reason']})" if report["teacher"].get("reason") else "")
        + ".\n",
    ]
    header = ["metric", *(COMPARISONS[c] for c in COMPARISONS if c in report["summary"])]
    rows = []
    for metric in CARD_METRICS:
        row = [METRIC_NAMES[metric]]
        for comparison in COMPARISONS:
            if comparison not in report["summary"]:
                continue
            row.append(format_stat(report["summary"][comparison].get(metric), ".3g", count=True, missing="n/a"))
        rows.append(row)
    if len(header) > 1:
        lines.append(table(header, rows))
    else:
        lines.append("The report holds no comparison with the teacher or the ground truth.")
    gates = [
        f"- {g['name']}: {g['metric']} {g['comparison']} {g['condition']}: **{g['status']}**"
        + (f" ({g['reason']})" if g.get("reason") else "")
        for g in report.get("gates", [])
    ]
    lines.append(f"\nVerdict of the report's gates: **{report['verdict']}**.")
    if gates:
        lines.append("\n" + "\n".join(gates))
    return "\n".join(lines) + "\n"


def cost_section(cost: Mapping[str, Any] | None) -> str:
    if not cost:
        return "Not measured at export (`cost=null`).\n"
    rows = cost["rows"]
    teacher = rows[0]
    chunks = [int(c) for c in cost["chunk_frames"]]
    out = [
        table(
            [
                "model",
                "file bytes",
                "s/s, 1 thread",
                "s/s, all threads",
                *[f"first {c} frames" for c in chunks],
                "x teacher",
            ],
            [
                [
                    r["name"],
                    f"{r['bytes']:,}",
                    f"{r['rtf_1_thread']:.4g}",
                    f"{r['rtf_cpu_all_threads']:.4g}",
                    *[f"{r['first_chunk_ms_cpu'][str(c)]:.1f} ms" for c in chunks],
                    f"{teacher['rtf_1_thread'] / r['rtf_1_thread']:.1f}",
                ]
                for r in rows
            ],
        ),  # fmt: skip
        f"\n{cost['seconds']:g} s of mel, median of {cost['repeats']} calls; s/s is seconds of compute per "
        f"second of audio. Machine: {cost['machine']}. The teacher carries random weights (its cost does "
        "not depend on them). Timings on a shared machine vary; compare the rows, which come from one run.",
    ]
    return "\n".join(out) + "\n"


def decoder_section(decoders: Mapping[str, Any] | None) -> str:
    """The conditional decoder graphs, their checks and their speed (``train/export.py conditional_decoder=true``)."""
    if not decoders:
        return ""
    timed = decoders["timed"]
    rows = [
        [
            f"`{name}`",
            f"{d['bytes']:,} ({_mib(d['bytes'])})",
            d["kind"],
            f"{d['session_s']:.2f} s",
            f"{d['seconds']:.3f} s",
            f"{d['check']['max_abs_diff']:.2g}" if d["kind"] == "fp32" else f"{d['check']['snr_db']:.1f} dB SNR",
        ]
        for name, d in decoders["files"].items()
    ]
    speed = f"{timed['speech_s']:g} s of speech, {timed['reference_s']:g} s reference, 1 thread"
    return f"""## For ONNX Chatterbox pipelines

`conditional_decoder.onnx` replaces the file of that name in the four-graph ONNX pipelines (onnx-community's
exports, transformers.js, onnxvoice, chatterbox-onnx): S3Gen's {decoders["family"]} flow
({decoders["steps"]} steps, from `{decoders["s3gen"]}`) and this model in one graph, with Chatterbox's 960-sample
fade. Inputs `speech_tokens` int64 [batch, tokens] (the reference's, then the new ones), `speaker_embeddings`
float32 [batch, 192], `speaker_features` float32 [batch, frames, 80]; output `waveform` float32 [batch,
samples]; the flow's noise is drawn inside; opset {decoders["opset"]} (the student graph's, written by
PyTorch's dynamo exporter, which starts at 18).

{table(["file", "bytes", "student", "session", speed, "vs PyTorch"], rows)}

"vs PyTorch": the graph with its noise as an input against Chatterbox's flow, this model and the fade in
PyTorch (largest difference for fp32; SNR against the QAT model for int8), at two lengths.

"""


def model_card(facts: Mapping[str, Any]) -> ModelCard:
    """The card of a release described by ``facts`` (what ``train/export.py`` gathers)."""
    config = facts["config"]
    report = facts.get("report")
    data = ModelCardData(
        model_name=facts["name"],
        license=facts["license"],
        library_name="vocos",
        base_model=list(facts["base_models"]) or None,
        tags=["vocoder", "vocos", "chatterbox", "s3gen", "audio", "onnx", *(["int8"] if facts.get("int8") else [])],
        eval_results=eval_results(report) if report else None,
    )
    files = table(
        ["file", "bytes", "what"],
        [
            [f"`{name}`", f"{size:,} ({_mib(size)})" if size is not None else "", facts["file_notes"].get(name, "")]
            for name, size in [*facts["files"], ("README.md", None), ("release.json", None)]
        ],
    )
    verification = facts["verification"]
    prior = StudentConfig.from_dict(config).amplitude_prior
    vocos_check = "its backbone and head as `from_pretrained` runs them" if prior else "`decode(mel)`"
    checks = [
        f"- `vocos` (`Vocos.from_hparams` + strict `load_state_dict`): {vocos_check} differs from the trained "
        f"student by at most {verification['vocos_max_abs']:.2g}.",
        f"- `model.onnx` (ONNX Runtime, fp32): max abs difference {verification['onnx_max_abs']:.2g} "
        f"(limit {verification['onnx_limit']:g}).",
    ]
    if "int8_snr_min_db" in verification:
        checks.append(
            f"- `model.int8.onnx`: SNR against the model as trained (fake-quantised) at least "
            f"{verification['int8_snr_min_db']:.1f} dB (limit {verification['int8_limit_db']:g} dB), checked on "
            f"{verification['cpu']}. Its integer weights are 7-bit (`{verification.get('int8_scheme', 'u8s8-7bit')}`), "
            "so no CPU's int8 kernels can overflow; it also carries a probe, and this project's loaders "
            "(`use_student`, `from_pretrained`) rerun it on each new machine and fall back to fp32 if it fails there."
        )
    checks.append(f"- on {verification['utterances']} validation mels of up to {verification['max_frames']} frames.")
    residual = facts.get("feature_residual") or {}
    mel_note = (
        f"`Vocos(audio)` / `feature_extractor` computes the mel with S3Gen's filterbank and framing stored in the "
        f"weights; it differs from the true S3Gen mel only in the log floor and the magnitude epsilon: mean "
        f"|difference| {residual['mean_abs']:.2g} (ln units, {residual['mean_abs_db']:.3f} dB), max "
        f"{residual['max_abs']:.2g}, {100 * residual['share_of_bins_within_1e-3']:.1f} % of bins within 1e-3, over "
        f"{residual['frames']} frames of the validation audio. For exact S3Gen mels use Chatterbox's own mel or "
        "this project's `train.s3gen.mel.S3GenMel`, and `decode`."
        if residual
        else "The feature extractor's difference from the S3Gen mel was not measured (no audio in the data)."
    )
    history = "\n".join(f"- {line}" for line in facts["history"])
    usage_vocos = (
        "```python\nimport torch\nfrom vocos import Vocos\n\n"
        f'vocoder = Vocos.from_pretrained("{facts["repo_hint"]}")\n'
        "mel = ...  # (B, 80, T) S3Gen log-mel (Chatterbox: what s3gen's flow returns), 50 frames/s\n"
        "with torch.inference_mode():\n    wav = vocoder.decode(mel)  # (B, T * 480) at 24 kHz\n```"
    )
    vocos_intro = "With the `vocos` package (its own code; nothing from vocos-distill is needed):"
    local_copy = (
        'From a local copy of this folder: `Vocos.from_hparams("config.yaml")`, then\n'
        '`load_state_dict(torch.load("pytorch_model.bin"))`.'
    )
    shape = StudentConfig.from_dict(config)
    if shape.lookahead is not None and not prior:  # vocos builds it by class path, from vocos-distill's runtime
        vocos_intro = (
            f"This student needs only {shape.lookahead} frames of future mel (`lookahead`): its `config.yaml` names "
            "vocos-distill's `vocos_distill.backbone.LookaheadBackbone` (convolutions padded left-heavy"
            + (", and `ShiftedISTFTHead`" if shape.lookahead_plan()[1] else "")
            + "), which `vocos` builds by class path once vocos-distill's runtime is installed (torch, `vocos`, "
            "nothing of the training side); `decode` is then `vocos`' own:"
        )
    if prior:  # the head needs the mel, which Vocos.decode does not pass
        vocos_intro = (
            "This student's head refines the mel's own least-squares magnitude (`amplitude_prior`), so it needs "
            "the mel as well as the backbone's features, which `vocos`' `Vocos.decode` does not pass (its head "
            "refuses the call, saying so). Load it with vocos-distill's runtime (torch, `vocos`, nothing of the "
            "training side)"
            + (
                f"; it also needs only {shape.lookahead} frames of future mel (`lookahead`: vocos-distill's "
                "`LookaheadBackbone`), which the same loader builds:"
                if shape.lookahead is not None
                else ":"
            )
        )
        usage_vocos = (
            "```python\nimport torch\nfrom vocos_distill import from_pretrained\n\n"
            f'vocoder = from_pretrained("{facts["repo_hint"]}", runtime="torch")\n'
            "mel = ...  # (B, 80, T) S3Gen log-mel (Chatterbox: what s3gen's flow returns), 50 frames/s\n"
            "with torch.inference_mode():\n    wav = vocoder(mel)  # (B, T * 480) at 24 kHz\n```"
        )
        local_copy = 'A local copy of this folder loads the same way: `from_pretrained("path/to/folder")`.'
    usage_onnx = (
        '```python\nimport numpy as np\nimport onnxruntime as ort\n\nsession = ort.InferenceSession("'
        + ("model.int8.onnx" if facts.get("int8") else "model.onnx")
        + '", providers=["CPUExecutionProvider"])\n'
        'wav = session.run(None, {"mel": mel.astype(np.float32)})[0]  # mel (B, 80, T) -> wav (B, T * 480)\n```\n'
        "The iSTFT is inside the graph (no PyTorch needed); the frame axis and the batch are dynamic."
    )
    usage_chatterbox = (
        "```python\nfrom chatterbox.tts import ChatterboxTTS\nfrom vocos_distill.chatterbox import use_student\n\n"
        'model = ChatterboxTTS.from_pretrained(device="cpu")\n'
        f'hift = use_student(model, "{facts["repo_hint"]}")  # returns the vocoder it replaced\n'
        'wav = model.generate("Hello.")\n```'
    )
    lookahead = facts.get("lookahead_frames") or StudentConfig.from_dict(config).receptive_field.right
    body = f"""
# {facts["name"]}

A [Vocos](https://github.com/gemelo-ai/vocos) vocoder for [Chatterbox TTS](https://github.com/resemble-ai/chatterbox)'s
S3Gen mels (80 bins, 24 kHz, hop 480, 50 frames/s), trained by distillation with
vocos-distill at git commit `{facts["git"]["commit"]}`. It turns the same
log-mel that Chatterbox's HiFT vocoder takes into a 24 kHz waveform. This folder was
written by vocos-distill {facts["runtime_version"]}, whose runtime loads it; into an existing
environment (Chatterbox's own: none of its pins move), install that runtime alone with

```bash
{facts["runtime_install"]}
```

Backbone: ConvNeXt, dim {config["dim"]}, intermediate {config["intermediate_dim"]}, {config["num_layers"]} blocks;
head: iSTFT, n_fft {config["n_fft"]}, hop {config["hop_length"]}. {facts["parameters"]:,} parameters.

## Files

{files}

## Quality

{quality_section(report)}
## Listening test

{listening_section(report)}
## Cost against the teacher

{cost_section(facts.get("cost"))}
{decoder_section(facts.get("conditional_decoder"))}## How it was made

{history}

Export-time checks (`train/export.py`, on this release's files):

{chr(10).join(checks)}

## Mel input

{mel_note}

## Base models and licences

{chr(10).join(f"- {line}" for line in facts["licences"])}

## Training data

{facts["training_data"]}

## Limitations

{chr(10).join(f"- {line}" for line in facts["limitations"])}

## Usage

{vocos_intro}

{usage_vocos}

{local_copy}

With ONNX Runtime only:

{usage_onnx}

In Chatterbox, with vocos-distill's drop-in (`vocos_distill.chatterbox`; it needs torch and `vocos`), after
the model is loaded; HiFT stays in place, with a warning, if this model cannot be loaded:

{usage_chatterbox}

Streaming: `ChatterboxStream(model)` (after `use_student(..., runtime="torch")`) decodes flow mels
chunk by chunk, equal to offline decoding with a look-ahead of {lookahead} frames ({lookahead * 20} ms);
`ChatterboxStream(model, lookahead=n)` trades exactness for latency.

`listen.html` (with `listen/`) compares ground truth, teacher and this model on held-out speech;
`release.json` lists every file's sha256.
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def limitations(report: Mapping[str, Any] | None, int8: bool) -> Sequence[str]:
    """What the card must warn about, from what the release knows."""
    lines = []
    if report is None:
        lines.append("Not evaluated: no quality figures back this release.")
    else:
        data = report["data"]
        lines.append(
            f"Quality was measured on {data['utterances']} utterances ({data['seconds']:.1f} s); the intervals "
            "above are wide accordingly."
        )
        if report["teacher"].get("status") != "loaded":
            lines.append(
                "The teacher (HiFT with Chatterbox's weights) was not available to the evaluation, so there is "
                "no comparison with it: the student's fidelity to HiFT is unmeasured."
            )
        if report["verdict"] != "pass":
            lines.append(f"The evaluation's verdict is `{report['verdict']}`, not `pass`.")
    lines.append("Trained for S3Gen mels only (80 Slaney bins, 0-8 kHz, 24 kHz, hop 480); other mels give wrong audio.")
    if int8:
        lines.append(
            "`model.int8.onnx` quantises activations per call (training fake-quantised them per frame); its "
            "distance from the trained model is the SNR above. `pytorch_model.bin` holds the same QAT-trained "
            "weights in fp32."
        )
    return lines
