"""Release: export (vocos layout, ONNX with the iSTFT inside, model card, listening page,
release.json) and publishing to a Hub double on 127.0.0.1 and to W&B offline."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers import REPO, compose, save_ckpt, student, tiny_config, write_clips, write_s3gen_checkpoint
from hub_server import HubServer
from huggingface_hub import ModelCard

from train.compress.compare import snr_db
from train.evaluation.evaluate import evaluate
from train.evaluation.report import read_report
from train.release.export import ReleaseError, export
from train.release.vocos_layout import FILTERBANK_KEY, MEL_SPEC, load_vocos
from train.s3gen.hift import HiFTGenerator
from train.s3gen.mel import S3GenMel
from train.student.graph import RealISTFT
from train.student.quantized import prepare, strip
from vocos_distill.files import sha256_file

TOKEN = "hf_testtoken_5b1d9e0c7a2f"  # what a real token looks like; must appear in no file written


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny QAT student with its evaluation report (an untrained student: verdict `fail`), and
    its release exported with force=true."""
    root = tmp_path_factory.mktemp("release")
    torch.manual_seed(0)
    clips = write_clips(root / "clips", count=3, seconds=1.0)
    teacher = write_s3gen_checkpoint(root / "s3gen.safetensors", HiFTGenerator(**tiny_config()))
    qat = prepare(student(dim=32, intermediate_dim=64, num_layers=2))
    ckpt = root / "checkpoints" / "runs" / "tiny-qat" / "r0" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    save_ckpt(qat, ckpt)
    data = [f"data.audio_dirs=[{clips}]", f"teacher.checkpoint={teacher}", "teacher.device=cpu"]
    report = evaluate(
        compose(
            [
                *data,
                f"checkpoint={ckpt}",
                "split=all",
                "device=cpu",
                "cost=null",
                "~logger",
                "progress_bar=false",
                "metrics.naturalness=null",
            ],  # fmt: skip
            root / "eval",
            "evaluate",
        )
    )
    report_path = root / "eval" / "run" / "report.json"
    assert report["verdict"] == "fail"  # untrained: the gates fail
    export_args = [*data, f"checkpoint={ckpt}", f"report={report_path}", "max_utterances=2", "cost.seconds=0.2",
                   "cost.repeats=1", "card.repo_id=acme/tiny-vocos"]  # fmt: skip
    with pytest.raises(ReleaseError, match=r"verdict is 'fail' \(gates: .*pesq.*\); nothing exported. Pass force"):
        export(compose(export_args, root, "export"))
    manifest = export(compose([*export_args, "force=true"], root, "export"))
    return {
        "root": root,
        "ckpt": ckpt,
        "qat": qat,
        "report": read_report(report_path),
        "report_path": report_path,
        "folder": Path(manifest["folder"]),
        "manifest": manifest,
        "data": data,
        "export_args": export_args,
    }


@pytest.fixture
def mel():
    torch.manual_seed(3)
    return torch.randn(2, 80, 37) - 5


# -- the files ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_release_folder_loads_in_plain_vocos_and_decodes_as_the_student(workspace, mel):
    folder = workspace["folder"]
    assert folder == workspace["root"] / "checkpoints" / "release" / "vocos-s3gen-tiny-qat-32x64x2-int8"
    vocos = load_vocos(folder)  # Vocos.from_hparams + a strict load_state_dict
    plain = strip(workspace["qat"])
    with torch.no_grad():
        assert torch.allclose(vocos.decode(mel), plain(mel), atol=1e-6)
    # the feature extractor holds S3Gen's filterbank and framing, so Vocos(audio) is close to S3Gen's mel
    assert torch.equal(vocos.state_dict()[FILTERBANK_KEY], S3GenMel().fbank.T)
    audio = torch.randn(24000) * 0.1
    assert (vocos.feature_extractor(audio[None])[0] - S3GenMel()(audio, 24000)[0]).abs().mean() < 1e-3
    residual = workspace["manifest"]["feature_residual"]
    assert residual["frames"] > 0 and residual["mean_abs"] < 1e-3
    import yaml

    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["mel"] == MEL_SPEC and config["backbone"]["init_args"]["dim"] == 32


def test_onnx_graphs_match_pytorch_for_any_length_and_batch(workspace, mel):
    folder = workspace["folder"]
    plain = strip(workspace["qat"])
    fp32 = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(folder / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        for x in (mel, mel[:1, :, :1], mel[:, :, :2], torch.randn(3, 80, 120) - 5):
            (wav,) = fp32.run(None, {"mel": x.numpy()})
            assert wav.shape == (x.shape[0], x.shape[-1] * 480)
            assert np.abs(wav - plain(x).numpy()).max() <= 1e-4
        (wav8,) = int8.run(None, {"mel": mel.numpy()})
        assert snr_db(workspace["qat"](mel), torch.from_numpy(wav8)) >= 30
    verification = workspace["manifest"]["verification"]
    assert verification["onnx_max_abs"] <= 1e-4 and verification["int8_snr_min_db"] >= 30
    assert verification["vocos_max_abs"] <= 1e-6


@pytest.mark.parametrize("form", ["matmul", "dft"])
def test_the_real_valued_istft_is_vocos_istft(form):
    from vocos.spectral_ops import ISTFT

    torch.manual_seed(0)
    spec = torch.randn(2, 961, 9, dtype=torch.complex64)
    expected = ISTFT(1920, 480, 1920, padding="same")(spec)
    got = RealISTFT(1920, 480, form)(spec.real, spec.imag)
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5)


def test_release_json_lists_every_file_with_its_sha256(workspace):
    folder, manifest = workspace["folder"], workspace["manifest"]
    written = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {"release.json"}
    assert set(manifest["files"]) == written
    for name, entry in manifest["files"].items():
        assert sha256_file(folder / name) == entry["sha256"] and (folder / name).stat().st_size == entry["bytes"]
    on_disk = json.loads((folder / "release.json").read_text())
    assert on_disk["source"]["sha256"] == sha256_file(workspace["ckpt"])
    assert on_disk["evaluation"]["verdict"] == "fail" and re.fullmatch(r"[0-9a-f]{40}", on_disk["git"]["commit"])
    import vocos_distill  # the runtime that wrote the release's class paths, and how to install it

    assert on_disk["runtime"] == {"package": "vocos-distill", "version": vocos_distill.__version__,
                                  "install": vocos_distill.INSTALL}  # fmt: skip


def test_the_model_card_carries_the_reports_numbers(workspace):
    card = ModelCard.load(workspace["folder"] / "README.md")
    report = workspace["report"]
    results = {(r.metric_config, r.metric_type): r for r in card.data.eval_results}
    assert ("student_vs_teacher", "pesq_wb") in results and ("student_vs_audio", "mel_distance_db") in results
    for (comparison, metric), result in results.items():
        stat = report["summary"][comparison][metric]
        assert result.metric_value == pytest.approx(stat["mean"], abs=1e-4)
        assert result.metric_args["ci95"] == pytest.approx(stat["ci95"], abs=1e-4)
        assert result.dataset_args["utterances"] == report["data"]["utterances"]
    assert card.data.license == "mit" and card.data.library_name == "vocos"
    # the body: the verdict, the cost table from one run, and usage naming the repo
    assert "Verdict of the report's gates: **fail**" in card.text
    cost = workspace["manifest"]["cost"]["rows"]
    assert [r["name"] for r in cost][0] == "teacher (HiFT)" and len(cost) == 4
    assert f"| teacher (HiFT) | {cost[0]['bytes']:,} |" in card.text
    assert 'Vocos.from_pretrained("acme/tiny-vocos")' in card.text
    assert 'use_student(model, "acme/tiny-vocos")' in card.text
    import vocos_distill

    assert f"written by vocos-distill {vocos_distill.__version__}" in card.text and vocos_distill.INSTALL in card.text
    assert "look-ahead of 11 frames (220 ms)" in card.text  # 2 blocks: 3 + 3 x 2 + 2


def test_listening_page_plays_in_headless_chromium(workspace, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's package)")
    page = (workspace["folder"] / "listen.html").as_uri()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
    dom = subprocess.run([*flags, "--virtual-time-budget=5000", "--dump-dom", page],
                         capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    players = re.findall(r"<audio[^>]*>", dom)
    # per held-out utterance: ground truth, teacher, fp32 and int8 students
    assert len(players) == 4 * workspace["manifest"]["verification"]["utterances"] > 0, dom[-2000:]
    durations = [re.search(r'data-duration="([^"]+)"', p) for p in players]
    assert all(d and float(d[1]) > 0 for d in durations), players
    shot = tmp_path / "listen.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,1600", page], capture_output=True, timeout=120)
    assert shot.stat().st_size > 10_000


def test_a_listening_experiment_is_made_from_an_exported_release(workspace, tmp_path):
    """``train/listen.py make`` on a release train/export.py wrote offline: its ground truth is the
    hidden reference, HiFT and both student forms are conditions, with the floor and the anchor."""
    out = tmp_path / "experiment"
    labels = json.loads((workspace["folder"] / "listen" / "clips.json").read_text())
    assert labels["00"]["utterance"].endswith(".wav") and labels["00"]["speaker"] == ""  # clips at the data's root
    command = [sys.executable, str(REPO / "train" / "listen.py"), "make", str(out), str(workspace["folder"])]
    refused = subprocess.run([*command, "--utterances", "1"], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "no speaker label" in refused.stderr  # one folder: no speakers to compare
    blocks = ["--blocks", "headphones,mushra,ab,acr"]
    done = subprocess.run([*command, "--utterances", "1", *blocks], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    experiment = json.loads((out / "experiment.json").read_text())
    name = workspace["folder"].name
    assert {c: v["role"] for c, v in experiment["conditions"].items()} == {
        "reference": "reference", "hift": "teacher", f"{name}-fp32": "student", f"{name}-int8": "student",
        "griffin_lim": "floor", "lp35": "anchor",
    }  # fmt: skip
    assert all((out / path).is_file() for trial in experiment["trials"] for path in trial["audio"].values())


# -- refusals --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_export_refuses_to_overwrite_and_leaves_nothing_behind_on_failure(workspace):
    root, folder = workspace["root"], workspace["folder"]
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    args = [*workspace["export_args"], "force=true", "cost=null"]
    with pytest.raises(ReleaseError, match=r"vocos-s3gen-tiny-qat-32x64x2-int8 already exists.*overwrite=true"):
        export(compose(args, root, "export"))
    # a check that cannot pass (max_abs_diff=0) stops the export with nothing written, old release intact
    with pytest.raises(ReleaseError, match=r"model.onnx differs from the PyTorch student by up to .*nothing written"):
        export(compose([*args, "overwrite=true", "max_abs_diff=0"], root, "export"))
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporaries left
    other = root / "other.ckpt"
    save_ckpt(student(dim=16, intermediate_dim=32), other)
    with pytest.raises(ReleaseError, match=r"report=.* evaluates .*last.ckpt .* not checkpoint=.*other.ckpt"):
        export(compose([*args, f"checkpoint={other}", "name=x"], root, "export"))


# -- publishing ----------------------------------------------------------------------------------------------
def _publish(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "train" / "publish.py"), *args, f"hydra.run.dir={cwd / 'runs' / 'publish'}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


@pytest.fixture
def hub_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "WANDB_"))}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_XET="1", WANDB_MODE="offline", WANDB_SILENT="true")
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        env[var] = str(tmp_path / "wandb-home")
    return env


@pytest.mark.slow
def test_publish_end_to_end_then_plain_vocos_downloads_it(workspace, tmp_path, hub_env, mel):
    with HubServer(TOKEN) as hub:
        env = {**hub_env, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN}
        done = _publish([f"release={workspace['folder']}", "repo_id=acme/tiny-vocos", "tag=v0.1"], env, tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        (commit,) = hub.state.commits("acme/tiny-vocos")
        assert hub.state.repos["acme/tiny-vocos"]["refs"]["v0.1"] == commit
        message = hub.state.repos["acme/tiny-vocos"]["commits"][commit]["message"]
        assert "last.ckpt" in message and "verdict fail" in message
        assert any(
            path.endswith("/lfs-upload/" + workspace["manifest"]["files"]["model.onnx"]["sha256"])
            for _, path, _ in hub.state.requests
        )  # fmt: skip  (binaries went through LFS)
        downloads = [p for m, p, _ in hub.state.requests if m == "GET" and "/resolve/" in p]
        assert len(downloads) == len(workspace["manifest"]["files"]) + 1  # checked back, every file

        # plain vocos, in a fresh process, against the same Hub: from_pretrained and decode
        torch.save(mel, tmp_path / "mel.pt")
        script = (
            "import sys, torch; from vocos import Vocos; v = Vocos.from_pretrained('acme/tiny-vocos'); "
            "torch.save(v.decode(torch.load(sys.argv[1])), sys.argv[2])"
        )
        loaded = subprocess.run([sys.executable, "-c", script, str(tmp_path / "mel.pt"), str(tmp_path / "wav.pt")],
                                capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        # a second release goes to a branch: main stays as it was
        again = _publish([f"release={workspace['folder']}", "repo_id=acme/tiny-vocos", "revision=candidate",
                          "wandb.mode=disabled"], env, tmp_path)  # fmt: skip
        assert again.returncode == 0, again.stderr[-3000:]
        refs = hub.state.repos["acme/tiny-vocos"]["refs"]
        assert refs["main"] == commit and refs["candidate"] != commit
    with torch.no_grad():
        assert torch.allclose(torch.load(tmp_path / "wav.pt"), strip(workspace["qat"])(mel), atol=1e-6)
    # W&B: an offline run in the publish run's folder, holding the model artifact with its metadata
    (run_file,) = (tmp_path / "runs").rglob("run-*.wandb")
    logged = run_file.read_bytes()
    assert workspace["manifest"]["name"].encode() in logged and b'"verdict":"fail"' in logged
    assert b'"pesq_wb":' in logged  # the report's metrics
    # the token is in no file this run wrote (Hydra's config dump, logs, W&B, the Hub cache)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in done.stdout + done.stderr


@pytest.mark.slow
def test_an_upload_failing_half_way_leaves_no_commit(workspace, tmp_path, hub_env):
    with HubServer(TOKEN) as hub:
        hub.state.fail_lfs_upload_after = 2
        env = {**hub_env, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN}
        done = _publish([f"release={workspace['folder']}", "repo_id=acme/tiny-vocos", "wandb.mode=disabled"], env,
                        tmp_path)  # fmt: skip
        assert done.returncode == 1
        said = done.stdout + done.stderr
        assert "storage quota exceeded" in said and "the repo has no partial release" in said
        assert hub.state.commits("acme/tiny-vocos") == [] and len(hub.state.lfs) == 2
        assert not any("/commit/" in path for _, path, _ in hub.state.requests)
    assert TOKEN not in done.stdout + done.stderr


@pytest.mark.slow
def test_dry_run_offline_and_no_token_send_nothing(workspace, tmp_path, hub_env):
    with HubServer(TOKEN) as hub:
        base = [f"release={workspace['folder']}", "repo_id=acme/tiny-vocos"]
        env = {**hub_env, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN}
        dry = _publish([*base, "dry_run=true"], env, tmp_path)
        assert dry.returncode == 0, dry.stderr[-2000:]
        assert "model.int8.onnx" in dry.stdout and "Nothing was sent" in dry.stdout
        assert f"{workspace['manifest']['files']['model.onnx']['bytes']:,} bytes" in dry.stdout
        offline = _publish(base, {**env, "HF_HUB_OFFLINE": "1"}, tmp_path)
        assert offline.returncode == 1 and "HF_HUB_OFFLINE is set" in offline.stdout + offline.stderr
        no_token = _publish(base, {k: v for k, v in env.items() if k != "HF_TOKEN"}, tmp_path)
        assert no_token.returncode == 1 and "no Hugging Face token" in no_token.stdout + no_token.stderr
        on_the_command_line = _publish([*base, f"+token={TOKEN}"], env, tmp_path)
        assert on_the_command_line.returncode == 1
        assert "token= is not an option" in on_the_command_line.stdout + on_the_command_line.stderr
        assert hub.state.requests == []
    for path in tmp_path.rglob("*"):  # not even the refused command line was written down
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_publish_refuses_a_release_that_changed_since_export(workspace, tmp_path):
    from train.release.publish import PublishError, publish

    copy = tmp_path / "copy"
    shutil.copytree(workspace["folder"], copy)
    (copy / "config.yaml").write_text((copy / "config.yaml").read_text() + "\n# edited\n")
    cfg = compose([f"release={copy}", "repo_id=acme/x", "dry_run=true"], tmp_path, "publish")
    with pytest.raises(PublishError, match=r"files changed since export \(sha256 differs\): \['config.yaml'\]"):
        publish(cfg)
    (copy / "stray.txt").write_text("x")
    with pytest.raises(
        PublishError, match=r"does not match its release.json: missing \[\], not listed \['stray.txt'\]"
    ):
        publish(cfg)


def test_the_cards_history_and_data_come_from_the_run_configs_up_the_chain(tmp_path):
    import yaml

    from train.release.provenance import describe_run, history, training_data

    corpus = tmp_path / "data" / "corpus"
    corpus.mkdir(parents=True)
    (corpus / "ATTRIBUTION.md").write_text("# Corpus\n\nClips of a public-domain reading, BSD-2-Clause packaging.\n")
    parent = tmp_path / "runs" / "finetune" / "r1" / "checkpoints" / "last.ckpt"
    child = tmp_path / "runs" / "finetune-qat" / "r2" / "checkpoints" / "last.ckpt"
    for ckpt, config in (
        (parent, {"task_name": "finetune", "student": {"init_from": None}, "trainer": {"max_steps": 2500}}),
        (child, {"task_name": "finetune", "run_group": "${task_name}-qat", "trainer": {"max_steps": 300},
                 "student": {"init_from": str(parent)},
                 "compress": {"_target_": "train.compress.qat.QuantizationAware"},
                 "module": {"target_weights": {"audio": 0.0, "parent": 1.0}}}),
    ):  # fmt: skip
        (ckpt.parents[1] / ".hydra").mkdir(parents=True)
        ckpt.parent.mkdir()
        ckpt.write_bytes(b"")
        config = {
            **config,
            "paths": {"data_dir": str(tmp_path / "data")},
            "data": {"audio_dirs": ["${paths.data_dir}/corpus"]},
        }
        (ckpt.parents[1] / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    lines, bases, runs = history(child)
    assert lines[0] == "initialised from scratch." and lines[1].startswith("training: run group `finetune`, 2500 steps")
    assert (
        lines[2] == "QAT: run group `finetune-qat`, 300 steps, targets: parent 1, "
        "mels: S3Gen's mel of each recording, no teacher"
    )  # interpolation resolved; a run config from before data.mel_source: the mels of recordings
    runs[1]["data"]["mel_source"] = "audio+flow"
    flow = describe_run(runs[1])
    assert "mels: S3Gen's mel of each recording; S3Gen's flow mel teacher-forced from each recording" in flow
    assert bases == [] and len(runs) == 2
    data = training_data(runs, tmp_path)
    assert data.startswith("`data/corpus` (ATTRIBUTION.md)") and "BSD-2-Clause packaging" in data


@pytest.mark.parametrize(
    ("shape", "classes", "loader"),
    [
        ({}, [], "Vocos.from_pretrained"),
        ({"lookahead": 4}, ["LookaheadBackbone"], "Vocos.from_pretrained"),
        ({"lookahead": 1}, ["LookaheadBackbone", "ShiftedISTFTHead"], "Vocos.from_pretrained"),
        ({"lookahead": 4, "amplitude_prior": True}, ["LookaheadBackbone"], "from_pretrained"),
    ],
)
def test_the_card_says_how_a_short_lookahead_student_loads(shape, classes, loader):
    """A student with ``lookahead`` names this project's classes, which vocos builds by class path."""
    from train.release.card import model_card
    from train.release.export import FILE_NOTES
    from vocos_distill.config import StudentConfig

    config = StudentConfig(dim=32, intermediate_dim=64, num_layers=2, **shape)
    verification = {"vocos_max_abs": 0.0, "onnx_max_abs": 0.0, "onnx_limit": 1e-4, "utterances": 1, "max_frames": 9}
    facts = {
        "name": "tiny", "config": config.to_dict(), "parameters": 1, "report": None, "cost": None, "int8": False,
        "lookahead_frames": config.receptive_field.right, "license": "mit", "base_models": [], "history": [],
        "licences": [], "training_data": [], "limitations": [], "feature_residual": None, "repo_hint": "acme/tiny",
        "verification": {**verification, "cpu": "x"}, "git": {"commit": "0" * 40}, "files": [],
        "file_notes": FILE_NOTES, "runtime_version": "0.2.0", "runtime_install": "pip install vocos-distill",
    }  # fmt: skip
    text = model_card(facts).text
    for name in ("LookaheadBackbone", "ShiftedISTFTHead"):
        assert (name in text) == (name in classes)
    assert loader in text
    assert f"look-ahead of {config.receptive_field.right} frames" in text
