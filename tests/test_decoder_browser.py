"""The conditional decoder in a browser: headless Chromium runs it with onnxruntime-web's WASM
build (from npm, pinned in ``tests/browser/package.json``), as transformers.js does, on a small
flow. The test twin (noise as an input) must give ONNX Runtime's samples; the released form
(noise drawn inside) must decode.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import student

from train.release.conditional_decoder import inputs, write_decoders
from train.s3gen.flow_graph import FlowGraph, small_flow
from train.student.graph import export_onnx
from vocos_distill.onnx import session

NPM = Path(__file__).parent / "browser"
ORT_WEB = NPM / "node_modules" / "onnxruntime-web" / "dist"
# WASM and ONNX Runtime's CPU kernels sum in other orders; the waveform peaks near 0.1
TOLERANCE = 1e-4

PAGE = """<!doctype html><meta charset="utf-8"><script src="ort/ort.wasm.min.js"></script>
<script>
ort.env.wasm.numThreads = 1;  // no cross-origin isolation here: one thread, as a plain page gets
ort.env.wasm.wasmPaths = new URL("ort/", location.href).href;
async function decode(graph) {
  const x = await (await fetch("inputs.json")).json();
  const session = await ort.InferenceSession.create(graph, {executionProviders: ["wasm"]});
  const ids = BigInt64Array.from(x.speech_tokens.map(BigInt));
  const feeds = {
    speech_tokens: new ort.Tensor("int64", ids, [1, ids.length]),
    speaker_embeddings: new ort.Tensor("float32", Float32Array.from(x.speaker_embeddings), [1, 192]),
    speaker_features: new ort.Tensor("float32", Float32Array.from(x.speaker_features), [1, x.frames, 80]),
  };
  if (session.inputNames.includes("noise"))
    feeds.noise = new ort.Tensor("float32", Float32Array.from(x.noise), [1, 80, 2 * x.speech_tokens.length]);
  const out = await session.run(feeds);
  return {dims: out.waveform.dims, data: Array.from(out.waveform.data)};
}
</script>"""


@pytest.fixture(scope="module")
def ort_web():
    if not (ORT_WEB / "ort.wasm.min.js").is_file():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: onnxruntime-web cannot be fetched (tests/browser/package.json)")
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NPM, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"npm ci in {NPM} failed: {done.stderr[-2000:]}"
    return ORT_WEB


@pytest.fixture(scope="module")
def site(tmp_path_factory, ort_web):
    """A folder served on the loopback: the page, onnxruntime-web, both graphs and their inputs."""
    root = tmp_path_factory.mktemp("site")
    model = export_onnx(student(dim=32, intermediate_dim=64, num_layers=2, seed=2), root / "model.onnx")
    flow = FlowGraph(small_flow(meanflow=True), steps=2, meanflow=True)
    twin = write_decoders(flow, root, "turbo", {"fp32": model}, noise_input=True)["fp32"][0]
    released = write_decoders(flow, root, "turbo", {"fp32": model})["fp32"][0]
    x = inputs(tokens=30, frames=20, vocab_size=flow.vocab_size, seed=4)
    (root / "inputs.json").write_text(
        json.dumps({k: v.flatten().tolist() for k, v in x.items()} | {"frames": x["speaker_features"].shape[1]})
    )
    (root / "index.html").write_text(PAGE)
    shutil.copytree(ort_web, root / "ort")
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/", twin, released, x
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm",
                      ".mjs": "text/javascript"}  # fmt: skip

    def log_message(self, *args) -> None:
        pass


def test_chromium_decodes_the_graph_with_onnxruntime_web(site):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's package)")
    from playwright.sync_api import sync_playwright

    url, twin, released, x = site
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=browser, args=["--no-sandbox"])
        page = chromium.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(url + "index.html")
        got_twin = page.evaluate(f"decode('{twin.name}')")
        got_released = page.evaluate(f"decode('{released.name}')")
        chromium.close()
    assert errors == []
    feeds = {k: v.numpy() for k, v in x.items()}
    (want,) = session(twin).run(None, feeds)
    assert got_twin["dims"] == list(want.shape) == [1, (2 * 30 - 20) * 480]  # the new tokens only
    assert np.abs(np.asarray(got_twin["data"], np.float32) - want[0]).max() < TOLERANCE
    assert got_released["dims"] == [1, (2 * 30 - 20) * 480]
    samples = torch.tensor(got_released["data"])
    assert torch.isfinite(samples).all() and samples.abs().max() > 0
    assert not torch.allclose(samples, torch.from_numpy(want[0]))  # its own noise, drawn in the page
