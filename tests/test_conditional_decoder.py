"""``conditional_decoder.onnx``: S3Gen's flow and the student in one graph, for the ONNX
Chatterbox pipelines. Each family's stand-in S3Gen checkpoint holds a small flow
(``save_stand_in(..., flow_width=64)``: Chatterbox's own classes, made narrow), which goes through
the same export code as a full-size one in seconds.

Chatterbox's path is run as Chatterbox runs it (``S3Gen.flow_inference`` seeded, the student, its
``trim_fade``), and the noise it drew is drawn again from the same seed for the graph's test twin.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from helpers import REPO, save_ckpt, student, write_clips, write_release, write_s3gen_checkpoint

from train.release.conditional_decoder import DecoderExportError, export_flow, save, write_decoders
from train.s3gen.flow import FlowError, load_s3gen, save_stand_in
from train.s3gen.flow_graph import TOKEN_LOOKUP, FlowGraph
from train.student.graph import snr_db
from train.student.quantized import prepare, strip
from vocos_distill.decoder_graph import DECODER_FILES, ConditionalDecoder, DecoderInputError
from vocos_distill.onnx import session

FILES = {"chatterbox": "s3gen.safetensors", "turbo": "s3gen_meanflow.safetensors", "multilingual": "s3gen.pt"}
# what onnxvoice's catalogue declares for Chatterbox: start/stop tokens, and 3 silence tokens appended
RUNTIME = {"start_speech_token": 6561, "stop_speech_token": 6562, "silence_token": 4299, "trailing_silence_tokens": 3}
SIZES = [(t, r) for t in (14, 37) for r in (8, 21)]  # (speech tokens to speak, reference tokens)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A tiny QAT student's graphs (model.onnx, model.int8.onnx with its probe) and the student."""
    model = prepare(student(dim=32, intermediate_dim=64, num_layers=2, seed=1)).eval()
    return write_release(tmp_path_factory.mktemp("student"), model), model


@pytest.fixture(scope="module", params=list(FILES))
def family(request, tmp_path_factory):
    name = request.param
    path = save_stand_in(tmp_path_factory.mktemp(name) / FILES[name], meanflow=name == "turbo", flow_width=64)
    s3gen = load_s3gen(path, device="cpu")
    assert s3gen.family.name == name
    return s3gen


def voice(ref_tokens: int, tokens: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, 6561, (1, ref_tokens), generator=g),
        torch.randint(0, 6561, (1, tokens), generator=g),
        torch.randn(1, 2 * ref_tokens, 80, generator=g) - 6.0,  # the reference's mel: 2 frames a token
        torch.randn(1, 192, generator=g),
    )


def chatterbox_path(s3gen, vocoder, ref_tokens, tokens, features, embedding, seed=3):
    """Chatterbox's own calls, and the noise they drew: ``(mel, waveform, noise)``."""
    ref = {"prompt_token": ref_tokens, "prompt_token_len": torch.tensor([ref_tokens.shape[1]]),
           "prompt_feat": features, "prompt_feat_len": None, "embedding": embedding}  # fmt: skip
    torch.manual_seed(seed)
    mel = s3gen.flow_inference(tokens, ref_dict=ref, finalize=True)
    torch.manual_seed(seed)  # the same draws, in Chatterbox's order
    total = 2 * (ref_tokens.shape[1] + tokens.shape[1])
    if s3gen.meanflow:  # flow_inference's noise for the new part, then the CFM's over the whole mel
        spoken = torch.randn(1, 80, 2 * tokens.shape[1])
        noise = torch.randn(1, 80, total)
        noise[..., features.shape[1] :] = spoken
    else:
        noise = torch.randn(1, 80, total)
    with torch.inference_mode():
        wav = vocoder(mel)
        wav[:, : len(s3gen.trim_fade)] *= s3gen.trim_fade
    return mel, wav, noise


def graph_inputs(ref_tokens, tokens, features, embedding):
    return torch.cat([ref_tokens, tokens], dim=1), embedding, features


@pytest.mark.slow
def test_the_decoder_equals_chatterbox_flow_inference_then_the_student_then_the_fade(family, release, tmp_path):
    folder, model = release
    flow = FlowGraph(family.flow, family.family.steps, family.family.meanflow)
    graphs = {"fp32": folder / "model.onnx", "int8": folder / "model.int8.onnx"}
    twins = write_decoders(flow, tmp_path, family.family.name, graphs, noise_input=True)
    fp32 = ConditionalDecoder(twins["fp32"][0], runtime="fp32")
    int8 = ConditionalDecoder(twins["int8"][0], runtime="int8")
    flow_alone = session(export_flow(flow, 18, noise_input=True).SerializeToString())
    for ref_len, length in SIZES:
        ref_tokens, tokens, features, embedding = voice(ref_len, length)
        mel, want, noise = chatterbox_path(family, strip(model), ref_tokens, tokens, features, embedding)
        x = graph_inputs(ref_tokens, tokens, features, embedding)
        names = ("speech_tokens", "speaker_embeddings", "speaker_features")
        feeds = {name: t.numpy() for name, t in zip(names, x, strict=True)}
        (got_mel,) = flow_alone.run(None, {**feeds, "noise": noise.numpy()})
        assert got_mel.shape == mel.shape == (1, 80, 2 * length)
        assert np.abs(got_mel - mel.numpy()).max() < 1e-4, (ref_len, length)
        got = fp32(*x, noise=noise)
        assert got.shape == want.shape == (1, 2 * length * 480)
        assert np.abs(got - want.numpy()).max() < 1e-4, (ref_len, length)
    # a batch: each row as it decodes alone (every row the same length, as the contract has no lengths)
    other = voice(ref_len, length, seed=1)
    _, want_other, noise_other = chatterbox_path(family, strip(model), *other)
    both = [torch.cat(pair) for pair in zip(x, graph_inputs(*other), strict=True)]
    got = fp32(*both, noise=torch.cat([noise, noise_other]))
    assert np.abs(got - torch.cat([want, want_other]).numpy()).max() < 1e-4
    # the int8 student inside: against the QAT model Chatterbox's path runs
    _, want, noise = chatterbox_path(family, model, ref_tokens, tokens, features, embedding)
    assert snr_db(want, torch.from_numpy(int8(*x, noise=noise))) > 30.0
    assert int8.int8_check.ok and int8.int8_check.snr_db > 30.0  # its probe, run on its student part


@pytest.fixture(scope="module")
def decoders(release, tmp_path_factory):
    """The graphs as released (noise drawn inside), from the turbo stand-in."""
    folder, _ = release
    path = save_stand_in(tmp_path_factory.mktemp("turbo") / FILES["turbo"], meanflow=True, flow_width=64)
    s3gen = load_s3gen(path, device="cpu")
    out = tmp_path_factory.mktemp("decoders")
    write_decoders(FlowGraph(s3gen.flow, 2, True), out, "turbo",
                   {"fp32": folder / "model.onnx", "int8": folder / "model.int8.onnx"})  # fmt: skip
    return out


def test_the_released_graphs_hold_the_community_contract(decoders):
    for kind, name in DECODER_FILES.items():
        model = onnx.load(str(decoders / name))
        onnx.checker.check_model(model)
        types = {
            i.name: (i.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim])
            for i in [*model.graph.input, *model.graph.output]
        }
        assert types == {
            "speech_tokens": (onnx.TensorProto.INT64, ["batch_size", "num_speech_tokens"]),
            "speaker_embeddings": (onnx.TensorProto.FLOAT, ["batch_size", 192]),
            "speaker_features": (onnx.TensorProto.FLOAT, ["batch_size", "feature_dim", 80]),
            "waveform": (onnx.TensorProto.FLOAT, ["batch_size", "num_samples"]),
        }, kind
        assert any(n.op_type == "RandomNormalLike" for n in model.graph.node)  # the noise is drawn inside
        # IR 8, one import per domain: ONNX Runtime 1.15 and later load it (IR 10 needs 1.18)
        assert model.ir_version == 8 and len({o.domain for o in model.opset_import}) == len(model.opset_import)
        meta = {p.key: p.value for p in model.metadata_props}
        assert json.loads(meta["conditional_decoder"])["family"] == "turbo"
        assert ("int8_probe" in meta) == (kind == "int8")
    decoder = ConditionalDecoder(decoders)  # a folder: int8 where its check passes
    assert decoder.path.name == DECODER_FILES["int8"]
    x = graph_inputs(*voice(10, 20)[:3], voice(10, 20)[3])
    a, b = decoder(*x), decoder(*x)
    assert a.shape == b.shape == (1, 20 * 960) and np.isfinite(a).all()
    assert not np.array_equal(a, b)  # fresh noise each call, as the community graphs draw it
    assert np.all(a[0, :480] == 0.0)  # the fade's 20 ms of silence


def test_onnxvoice_and_chatterbox_onnx_run_the_graph(decoders, tmp_path, monkeypatch):
    """The callers from PyPI, as they call it: onnxvoice's Chatterbox adapter (its graph check, then
    its _decode: prompt + speech + 3 silence tokens) and chatterbox-onnx's decoder call."""
    from onnxvoice.systems.chatterbox import ChatterboxAdapter, ChatterboxVoiceState
    from onnxvoice.types import Installation, InstalledArtifact

    ref_tokens, tokens, features, embedding = voice(10, 30)
    for name in DECODER_FILES.values():
        path = decoders / name
        artifact = InstalledArtifact(
            role="graph",
            filename=name,
            path=path,
            component="conditional_decoder",
            size=path.stat().st_size,
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        installation = Installation(system="chatterbox", id="vocos-student", kind="tts", path=decoders,
                                    artifacts=(artifact,), sample_rate=24000,
                                    metadata={"runtime": RUNTIME})  # fmt: skip
        adapter = ChatterboxAdapter(installation)
        state = ChatterboxVoiceState(
            np.zeros((1, 1, 1024), np.float32), ref_tokens.numpy(), embedding.numpy(), features.numpy()
        )
        audio = adapter._decode([6561, *tokens[0].tolist(), 6562], state)
        assert audio.shape == ((30 + 3) * 960,) and np.isfinite(audio).all()  # the graph passed _validate_graph

    import chatterbox_onnx

    graphs = tmp_path / "onnx"
    graphs.mkdir()
    (graphs / "conditional_decoder.onnx").symlink_to(decoders / DECODER_FILES["fp32"])
    caller = chatterbox_onnx.ChatterboxOnnx.__new__(chatterbox_onnx.ChatterboxOnnx)  # its sessions only: no Hub here
    caller.cond_decoder_session = session(graphs / "conditional_decoder.onnx")
    wav = caller._generate_waveform(
        "", cond_emb=None, prompt_token=ref_tokens.numpy(), ref_x_vector=embedding.numpy(),
        prompt_feat=features.numpy(), max_new_tokens=1, exaggeration=0.5,
        speech_tokens=torch.cat([ref_tokens, tokens], 1).numpy(),
    )  # fmt: skip
    assert wav.shape == (30 * 960,) and np.isfinite(wav).all()


def test_bad_inputs_are_named_before_and_inside_the_graph(decoders):
    decoder = ConditionalDecoder(decoders, runtime="fp32")
    tokens, embedding, features = graph_inputs(*voice(10, 20)[:3], voice(10, 20)[3])
    with pytest.raises(DecoderInputError, match="speech_tokens is float32"):
        decoder(tokens.float(), embedding, features)
    with pytest.raises(DecoderInputError, match=r"speech_tokens\[0, 4\] is 6561: ids must lie in 0..6560"):
        decoder(tokens.index_fill(1, torch.tensor([4]), 6561), embedding, features)
    with pytest.raises(DecoderInputError, match=r"speech_tokens\[0, 0\] is -1"):
        decoder(tokens.index_fill(1, torch.tensor([0]), -1), embedding, features)
    with pytest.raises(DecoderInputError, match=r"speaker_embeddings has shape \(1, 80\)"):
        decoder(tokens, embedding[:, :80], features)
    with pytest.raises(DecoderInputError, match="speaker_features has 60 frames, speech_tokens 30 tokens"):
        decoder(tokens, embedding, torch.randn(1, 60, 80))
    assert decoder(tokens.int(), embedding, features).shape == (1, 20 * 960)  # any integer ids: cast to int64
    # a caller that feeds the graph directly: the look-up node's name says what is wrong
    raw = session(decoders / DECODER_FILES["fp32"])
    for bad in (6561, -1):
        feeds = {"speech_tokens": tokens.index_fill(1, torch.tensor([3]), bad).numpy(),
                 "speaker_embeddings": embedding.numpy(), "speaker_features": features.numpy()}  # fmt: skip
        with pytest.raises(Exception, match=TOKEN_LOOKUP):
            raw.run(None, feeds)
    with pytest.raises(Exception, match="int32"):
        raw.run(None, {**feeds, "speech_tokens": tokens.int().numpy()})


def test_a_large_graph_keeps_its_weights_beside_it_and_a_failed_write_leaves_nothing(decoders, tmp_path, monkeypatch):
    model = onnx.load(str(decoders / DECODER_FILES["fp32"]))
    files = save(model, tmp_path / "conditional_decoder.onnx", external_above=1 << 20)
    assert [p.name for p in files] == ["conditional_decoder.onnx", "conditional_decoder.onnx_data"]
    assert files[0].stat().st_size < 1 << 20 < files[1].stat().st_size
    x = graph_inputs(*voice(10, 20)[:3], voice(10, 20)[3])
    assert ConditionalDecoder(files[0])(*x).shape == (1, 20 * 960)
    again = save(model, tmp_path / "conditional_decoder.onnx")  # small enough: one file, the old data removed
    assert [p.name for p in again] == ["conditional_decoder.onnx"] and not files[1].exists()

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        save(model, tmp_path / "other" / "conditional_decoder.onnx", external_above=1 << 20)
    assert not list((tmp_path / "other").iterdir())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    clips = write_clips(root / "clips", count=2, seconds=1.0)
    ckpt = root / "qat.ckpt"
    save_ckpt(prepare(student(dim=32, intermediate_dim=64, num_layers=2)), ckpt)
    s3gen = save_stand_in(root / "chatterbox" / FILES["chatterbox"], flow_width=64)
    args = [f"checkpoint={ckpt}", f"teacher.checkpoint={s3gen}", "teacher.device=cpu", f"data.audio_dirs=[{clips}]",
            "cost=null", "max_utterances=2", "listen_utterances=1", "conditional_decoder=true"]  # fmt: skip
    return root, args


@pytest.mark.slow
def test_one_command_writes_both_decoders_into_the_release(workspace):
    root, args = workspace
    done = subprocess.run([sys.executable, "train/export.py", *args, f"out={root / 'release'}"],
                          cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    release = root / "release"
    manifest = json.loads((release / "release.json").read_text())
    record = manifest["conditional_decoder"]
    assert record["family"] == "chatterbox" and record["steps"] == 10 and record["opset"] == 18
    for name in DECODER_FILES.values():
        assert name in manifest["files"] and record["files"][name]["seconds"] > 0
    assert record["files"][DECODER_FILES["fp32"]]["check"]["max_abs_diff"] < 1e-4
    card = (release / "README.md").read_text()
    assert "## For ONNX Chatterbox pipelines" in card and f"`{DECODER_FILES['int8']}`" in card
    assert not list(release.glob("*-noise.onnx"))  # the twins the checks ran on are gone


def test_export_names_what_is_wrong_and_writes_nothing(workspace, tmp_path):
    from flow_helpers import keys_only_file
    from helpers import compose, tiny_config

    from train.release.export import export
    from train.s3gen.hift import HiFTGenerator
    from vocos_distill.hub import WeightsUnavailableError

    root, args = workspace
    misshapen = write_s3gen_checkpoint(tmp_path / "tiny.safetensors", HiFTGenerator(**tiny_config()))
    no_flow = keys_only_file(tmp_path / "no-flow.safetensors", ("tokenizer.", "mel2wav."))
    cases = [
        ([f"teacher.checkpoint={no_flow}"], FlowError, "has no the CAMPPlus speaker encoder, no the flow"),
        (
            [f"teacher.checkpoint={misshapen}"],
            FlowError,
            r"does not match Chatterbox's S3Gen \(chatterbox\): size mismatch",
        ),
        (["decoder_family=turbo"], FlowError, "holds a CFM .*decoder_family=turbo"),
        # no local file: the Hub's, here from an empty cache without asking the network
        (["teacher.checkpoint=null", "teacher.repo_id=acme/s3gen", "teacher.filename=s3gen_meanflow.safetensors",
          f"teacher.cache_dir={tmp_path / 'hub'}", "teacher.local_files_only=true"],
         WeightsUnavailableError, "could not get 's3gen_meanflow.safetensors' from the Hugging Face Hub repo 'acme/s"),
    ]  # fmt: skip
    other = tmp_path / "hop256.ckpt"
    save_ckpt(prepare(student(dim=32, intermediate_dim=64, num_layers=2, hop_length=256, n_fft=1024)), other)
    cases.append(([f"checkpoint={other}"], DecoderExportError, "hop_length 256"))
    for i, (extra, error, message) in enumerate(cases):
        out = tmp_path / f"release{i}"
        with pytest.raises(error, match=message):
            export(compose([*args, *extra, f"out={out}"], tmp_path / f"run{i}", "export"))
        assert not out.exists() and not list(tmp_path.glob(f".release{i}*"))


def test_an_int8_decoder_wrong_here_falls_back_to_fp32_and_says_why(decoders, tmp_path):
    """The int8 graph's probe is the runtime's check: a probe it cannot meet (planted: a 200 dB
    floor) makes ``auto`` take the fp32 graph with an Int8FallbackWarning, and ``int8`` refuse."""
    import shutil
    import warnings

    from vocos_distill.errors import Int8FallbackWarning
    from vocos_distill.int8_check import PROBE_KEY, Int8MismatchError

    folder = tmp_path / "decoders"
    folder.mkdir()
    shutil.copy(decoders / DECODER_FILES["fp32"], folder)
    model = onnx.load(str(decoders / DECODER_FILES["int8"]))
    entry = next(p for p in model.metadata_props if p.key == PROBE_KEY)
    entry.value = json.dumps({**json.loads(entry.value), "min_snr_db": 200.0})
    onnx.save(model, str(folder / DECODER_FILES["int8"]))
    with pytest.warns(
        Int8FallbackWarning, match=r"conditional_decoder_int8.onnx.*must reach 200 dB.*using conditional_decoder.onnx"
    ):
        decoder = ConditionalDecoder(folder)
    assert decoder.path.name == DECODER_FILES["fp32"] and not decoder.is_int8
    with pytest.raises(Int8MismatchError, match="the int8 decoder is wrong on this machine"):
        ConditionalDecoder(folder, runtime="int8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the untouched graph: int8, no warning
        assert ConditionalDecoder(decoders).is_int8


def test_a_broken_or_mistaken_decoder_file_is_named(decoders, release, tmp_path):
    """A truncated int8 graph under ``auto`` gives the fp32 one, saying so; asked for by name, or
    a file of the other kind asked for as this one, it is an error naming the file."""
    import shutil

    from vocos_distill.errors import ConfigError, Int8FallbackWarning, MissingFileError

    folder = tmp_path / "decoders"
    folder.mkdir()
    shutil.copy(decoders / DECODER_FILES["fp32"], folder)
    (folder / DECODER_FILES["int8"]).write_bytes((decoders / DECODER_FILES["int8"]).read_bytes()[:4096])
    with pytest.warns(Int8FallbackWarning, match="conditional_decoder_int8.onnx: not a conditional decoder"):
        assert ConditionalDecoder(folder).path.name == DECODER_FILES["fp32"]
    with pytest.raises(ConfigError, match="conditional_decoder_int8.onnx: not a conditional decoder"):
        ConditionalDecoder(folder, runtime="int8")
    with pytest.raises(ConfigError, match=r"conditional_decoder_int8.onnx: an int8 decoder, not the runtime='fp32'"):
        ConditionalDecoder(decoders / DECODER_FILES["int8"], runtime="fp32")
    with pytest.raises(ConfigError, match="model.onnx: not a conditional decoder"):
        ConditionalDecoder(release[0] / "model.onnx")  # the student's own graph
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match="empty: no conditional_decoder_int8.onnx or conditional_decoder.onnx"):
        ConditionalDecoder(tmp_path / "empty")
