"""The listening test's server as someone who reaches it would try it (issue 38): blind (nothing
but the current page's stimuli is served, under names nothing can be computed from), one person
per name, answers that show the listener listened, and safe to share on a network.

The server runs as users run it (``python train/listen.py serve``, a subprocess on 127.0.0.1),
probed over HTTP with nothing but its address and the experiment's public inputs (the releases,
the seed); the experimenter's files are read only to check what was stored.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO
from test_listening import fake_release

from train.listening.experiment import make_experiment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """``train/listen.py serve`` in a subprocess, and HTTP requests to it."""

    def __init__(self, folder: Path, log: Path, *extra: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "train" / "listen.py"), "serve", str(folder), "--port", str(self.port), *extra],
            stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )  # fmt: skip
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(log.read_text()) from None
                time.sleep(0.2)
        raise RuntimeError(f"the server did not start: {log.read_text()}")

    def request(self, method: str, path: str, body=None, headers=None) -> tuple[int, bytes, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        connection.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        out = response.status, response.read(), dict(response.getheaders())
        connection.close()
        return out

    def api(self, path: str, body: dict, token: str | None = None) -> tuple[int, dict]:
        status, data, _ = self.request("POST", path, body, {"X-Listener-Token": token} if token else None)
        return status, json.loads(data or b"{}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("listening")
    release = fake_release(root / "student", student_gain=1.0, count=4)
    return make_experiment(root / "experiment", [release], utterances=4, seed=0)


@pytest.fixture
def served(experiment, tmp_path):
    server = Served(experiment, tmp_path / "server.log")
    yield server
    server.stop()


def start(served: Served, name: str) -> str:
    status, body = served.api("/api/start", {"name": name})
    assert status == 200, body
    return body["token"]


# -- 1, 2, 3: blind by construction ------------------------------------------------------------------
def test_nothing_but_the_current_pages_stimuli_is_served(experiment, served):
    """Issue 38, 1-3: the answer key (experiment.json), other listeners' answers, the audio folder,
    source files and uploads were all served; file names were sha1(seed:trial:condition)."""
    ann = start(served, "ann")
    status, view = served.api("/api/page", {}, ann)
    assert status == 200
    shown = json.dumps(view)
    public = json.loads((experiment / "experiment.json").read_text())
    for condition in public["conditions"]:
        assert condition not in shown  # the page never names a condition
    # ann answers her first page, so there is an answer file to go after
    page = view["page"]
    assert page["block"] == "headphones"
    status, _ = served.api("/api/answer", {"page": "headphones", "responses": [1] * len(page["trials"])}, ann)
    assert status == 200
    audio_files = [p for t in public["trials"] for p in t["audio"].values()]
    old_names = {hashlib.sha1(f"0:{t['id']}:{c}".encode()).hexdigest()[:12] for t in public["trials"]
                 for c in public["conditions"]}  # fmt: skip
    assert not old_names & {Path(p).stem for p in audio_files}  # file names are random, not computable
    probes = [
        "/experiment.json", "/.secret", "/listeners/ann.json", "/answers/ann/headphones.json", f"/{audio_files[0]}",
        f"/gradio_api/file={experiment}/experiment.json", f"/file={experiment}/experiment.json",
        "/../experiment.json", "/%2e%2e/experiment.json", "/api/audio/../../experiment.json",
        f"/api/audio/{Path(audio_files[0]).stem}", f"/api/audio/{Path(audio_files[0]).name}",
        "/gradio_api/info", "/config", "/info", "/docs", "/openapi.json", "/train/listening/serve.py",
        "/page.html", "/instructions.html", "/progress/../experiment.json", f"//{experiment}/experiment.json",
    ]  # fmt: skip
    for path in probes:
        for headers in (None, {"X-Listener-Token": ann}):
            status, body, _ = served.request("GET", path, headers=headers)
            assert status in (403, 404), (path, status)
            assert b"reference" not in body and b"ratings" not in body, path
    for path in ("/gradio_api/upload", "/upload", "/api/upload", "/api/audio/x"):
        status, _, _ = served.request("POST", path, b"x" * 1000, {"Content-Type": "application/octet-stream"})
        assert status in (403, 404, 405), (path, status)
    # another listener cannot fetch ann's stimuli, and ann cannot fetch another page's
    bob = start(served, "bob")
    _, bobs = served.api("/api/page", {}, bob)
    _, anns = served.api("/api/page", {}, ann)
    theirs = set(bobs["page"]["trials"])
    mine = {*anns["page"].get("slots", []), anns["page"].get("reference")} - {None}
    assert mine and not mine & theirs
    for sid in theirs:
        assert served.request("GET", f"/api/audio/{sid}", headers={"X-Listener-Token": ann})[0] == 404
        assert served.request("GET", f"/api/audio/{sid}")[0] == 403
        status, data, headers = served.request("GET", f"/api/audio/{sid}", headers={"X-Listener-Token": bob})
        assert status == 200 and data[:4] == b"RIFF"
        assert "Content-Disposition" not in headers and "Set-Cookie" not in headers


def test_the_page_keeps_nothing_and_offers_no_download_share_or_api(served):
    status, page, headers = served.request("GET", "/")
    assert status == 200 and "Set-Cookie" not in headers and headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    text = page.decode()
    for word in ("localStorage", "sessionStorage", "document.cookie", "download", "share", "waveform",
                 "gradio", "<audio", "http://", "https://"):  # fmt: skip
        assert word not in text, word


# -- 6, 9: listeners ---------------------------------------------------------------------------------------
def test_a_taken_name_is_refused_and_the_resume_link_survives_a_restart(experiment, tmp_path):
    """Issue 38, 6 and 9: two sessions as "carol" overwrote each other; "Zoë Smith" was refused only at
    the first submit, after the page's ratings were given; a restart left open tabs with errors."""
    server = Served(experiment, tmp_path / "a.log")
    try:
        status, refused = server.api("/api/start", {"name": "Zoë Smith"})
        assert status == 400 and "letters, digits" in refused["error"]
        carol = start(server, "carol")
        status, taken = server.api("/api/start", {"name": "carol"})
        assert status == 409 and "resume link" in taken["error"]
        _, view = server.api("/api/page", {}, carol)
        status, _ = server.api("/api/answer", {"page": view["page"]["id"], "responses": [1] * 6}, carol)
        assert status == 200
        stored = (experiment / "answers" / "carol" / "headphones.json").read_bytes()
        status, again = server.api("/api/answer", {"page": "headphones", "responses": [2] * 6}, carol)
        assert status == 409 and "already answered" in again["error"]  # a second tab cannot overwrite
        assert (experiment / "answers" / "carol" / "headphones.json").read_bytes() == stored
        status, progress, _ = server.request("GET", "/progress")  # the experimenter's view, on this machine
        assert status == 200 and b"<td>carol</td><td>1 of" in progress
    finally:
        server.stop()
    restarted = Served(experiment, tmp_path / "b.log")
    try:
        status, view = restarted.api("/api/resume", {"token": carol})
        assert status == 200 and view["listener"] == "carol" and view["page"]["id"] == "familiarisation"
        assert restarted.api("/api/resume", {"token": "not-a-token"})[0] == 403
    finally:
        restarted.stop()


# -- 8: listeners who listened -------------------------------------------------------------------------------
def test_a_mushra_page_is_refused_until_every_sample_is_played_and_rated(experiment, served):
    """Issue 38, 8: an untouched MUSHRA page submitted 50 for every condition, with no play counts."""
    dan = start(served, "dan")
    _, view = served.api("/api/page", {}, dan)
    served.api("/api/answer", {"page": "headphones", "responses": [1] * 6}, dan)
    _, view = served.api("/api/page", {}, dan)
    page = view["page"]
    assert page["block"] == "familiarisation"
    status, body = served.api("/api/answer", {"page": page["id"], "plays": {}}, dan)
    assert status == 400 and "play every sample" in body["error"]
    _, view = served.api("/api/answer", {"page": page["id"], "plays": dict.fromkeys(page["slots"], 1)}, dan)
    page = view["page"]
    assert page["block"] == "mushra" and page["reference"] not in page["slots"]  # the open reference, labelled
    ratings = dict.fromkeys(page["slots"], 50)
    status, body = served.api("/api/answer", {"page": page["id"], "ratings": ratings}, dan)
    assert status == 400 and "play every sample before rating" in body["error"]
    plays = dict.fromkeys(page["slots"], 2)
    status, body = served.api("/api/answer", {"page": page["id"], "ratings": {}, "plays": plays}, dan)
    assert status == 400 and "rate every sample" in body["error"]
    status, _ = served.api(
        "/api/answer", {"page": page["id"], "ratings": ratings, "plays": plays, "seconds": 31.5}, dan
    )
    assert status == 200
    stored = json.loads((experiment / "answers" / "dan" / f"{page['id']}.json").read_text())
    conditions = json.loads((experiment / "experiment.json").read_text())["conditions"]
    assert set(stored["ratings"]) == set(conditions) and set(stored["plays"].values()) == {2}
    assert stored["seconds"] == 31.5


# -- 10: on a network --------------------------------------------------------------------------------------
def test_requests_are_capped_and_a_network_address_needs_a_password(experiment, served, tmp_path):
    """Issue 38, 10: 200 MB uploads and 50 MB JSON bodies were accepted; --host 0.0.0.0 served with no
    password and printed http://0.0.0.0:7865/."""
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    connection.putrequest("POST", "/api/start")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(50 * 1024 * 1024))
    connection.endheaders()
    connection.send(b'{"name": "' + b"x" * 1000)  # the server answers before the body is sent
    assert connection.getresponse().status == 413
    connection.close()
    done = subprocess.run([sys.executable, str(REPO / "train" / "listen.py"), "serve", str(experiment), "--host",
                           "0.0.0.0", "--port", str(free_port())], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "LISTENING_PASSWORD"})  # fmt: skip
    assert done.returncode == 2
    assert "set a password" in done.stderr and "ssh -N -L" in done.stderr and "Traceback" not in done.stderr
    secret = tmp_path / "password"
    secret.write_text("correct horse\n")
    shared = Served(experiment, tmp_path / "shared.log", "--host", "0.0.0.0", "--password-file", str(secret))
    try:
        assert shared.request("GET", "/")[0] == 401
        import base64

        good = {"Authorization": "Basic " + base64.b64encode(b"listener:correct horse").decode()}
        bad = {"Authorization": "Basic " + base64.b64encode(b"listener:wrong").decode()}
        assert shared.request("GET", "/", headers=good)[0] == 200
        assert shared.request("GET", "/", headers=bad)[0] == 401
        time.sleep(0.5)
        said = (tmp_path / "shared.log").read_text()
        assert "http://0.0.0.0" not in said and f":{shared.port}/" in said
    finally:
        shared.stop()
