"""Serve an experiment's pages to listeners: ``python train/listen.py serve EXPERIMENT``.

A small HTTP server of this project's own (the standard library's ``ThreadingHTTPServer``) and one
page (``page.html``, no third-party script): Gradio served the whole experiment folder, drew
waveforms and offered downloads, and could not give BS.1534's MUSHRA page (an open reference,
instant switching, a loop). What it serves, and nothing else:

* ``GET /``: the page; it keeps nothing in the browser (no cookie, no storage) beyond the tab.
* ``POST /api/start`` ``{"name"}``: a new listener, checked at once; a taken name is refused. The
  answer holds a private resume token (stored here as its SHA-256 only) and the link that carries it.
* ``POST /api/resume`` ``{"token"}``: the listener of a resume link, back at their next page.
* ``POST /api/page``: the listener's current page (every call after start carries the token in
  ``X-Listener-Token``): the block, and stimulus ids for the page's sounds.
* ``GET /api/audio/<id>``: one stimulus of the listener's current page, by its id, with the token.
  An id is an HMAC of the listener, the page and the condition under the experiment's secret
  (``.secret``, drawn at ``make``, never served): different for every listener and page, and
  nothing in it or in the page says which condition it is.
* ``POST /api/answer``: the current page's answer, checked and stored at once
  (:func:`train.listening.answers.write_answer`); stimulus ids are turned back into conditions here.
* ``GET /progress``: the experimenter's view (listeners, pages done), to a client on this machine only.

Everything else is a 404, a request body over :data:`MAX_BODY` a 413. It listens on 127.0.0.1
unless another address is asked for; any other address needs a password (HTTP basic auth, from
``--password-file`` or ``$LISTENING_PASSWORD``), and the command says how to tunnel over SSH instead.

Pages, in order: the headphone check, a familiarisation page (every condition of the first MUSHRA
trial, played before any rating), then each block's pages shuffled, MUSHRA slots and A/B sides in
an order drawn from the listener's name and the experiment's seed; a break is offered every
:data:`BREAK_EVERY` pages.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import ipaddress
import json
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from train.listening.answers import (
    ANSWERS,
    BLOCKS,
    EXPERIMENT,
    SECRET,
    ListeningDataError,
    check_name,
    read_conditions,
    write_answer,
)
from vocos_distill.files import atomic_write_text

PAGE = Path(__file__).with_name("page.html")
LISTENERS = "listeners"
MAX_BODY = 16 * 1024  # an answer is a few hundred bytes
BREAK_EVERY = 20
HEADERS = {  # the page and the API: nothing cached, nothing from elsewhere, no referrer
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'",
}


class Refused(Exception):
    """An API call refused with an HTTP status and a message the page shows."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class Study:
    """An experiment folder as the server sees it: the pages of each listener, their stimuli, the
    listeners' tokens, and where answers go."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).resolve()
        try:
            self.experiment = json.loads((self.folder / EXPERIMENT).read_text())
            self.secret = (self.folder / SECRET).read_bytes().strip()
        except (OSError, ValueError) as err:
            raise ListeningDataError(
                f"{self.folder}: not an experiment made by this version of train/listen.py make "
                f"({type(err).__name__}: {err}); make it again"
            ) from None
        self.conditions = read_conditions(self.folder)
        self.trials = {t["id"]: t for t in self.experiment["trials"]}
        self.lock = threading.Lock()
        self.tokens: dict[str, str] = {}  # token SHA-256 -> listener
        for path in sorted((self.folder / LISTENERS).glob("*.json")):
            try:
                self.tokens[json.loads(path.read_text())["token_sha256"]] = path.stem
            except (OSError, ValueError, KeyError, TypeError):
                raise ListeningDataError(f"{path}: unreadable listener record; nothing was changed") from None

    # -- listeners ----------------------------------------------------------------------------
    def start(self, name: Any) -> tuple[str, str]:
        """A new listener ``name``: ``(name, token)``; a taken or invalid name is refused."""
        try:
            name = check_name(name.strip() if isinstance(name, str) else name)
        except ListeningDataError as err:
            raise Refused(HTTPStatus.BAD_REQUEST, str(err)) from None
        token = secrets.token_urlsafe(24)
        record = self.folder / LISTENERS / f"{name}.json"
        with self.lock:
            if record.exists() or (self.folder / ANSWERS / name).exists():
                raise Refused(
                    HTTPStatus.CONFLICT,
                    f"the name {name!r} is taken: if it is yours, open your resume link; else choose another",
                )
            digest = hashlib.sha256(token.encode()).hexdigest()
            started = datetime.now(timezone.utc).isoformat(timespec="seconds")
            atomic_write_text(record, json.dumps({"token_sha256": digest, "started": started}))
            self.tokens[digest] = name
        return name, token

    def listener(self, token: Any) -> str:
        name = self.tokens.get(hashlib.sha256(str(token).encode()).hexdigest()) if token else None
        if name is None:
            raise Refused(HTTPStatus.FORBIDDEN, "unknown or missing resume token: start again with your name")
        return name

    # -- pages --------------------------------------------------------------------------------
    def pages(self, listener: str) -> list[dict[str, Any]]:
        """This listener's pages in order, each with its id, block, and the conditions it plays."""
        draw = random.Random(f"{self.experiment.get('seed', 0)}:{listener}")
        blocks = self.experiment["blocks"]
        conditions = list(self.experiment["conditions"])
        out = []
        if blocks.get("headphones"):
            out.append({"id": "headphones", "block": "headphones", "trial": "headphones"})
        if blocks.get("mushra"):
            out.append({"id": "familiarisation", "block": "familiarisation", "trial": blocks["mushra"][0]["trial"],
                        "slots": sorted(conditions, key=lambda _: draw.random())})  # fmt: skip
        for block in BLOCKS[1:]:
            specs = list(enumerate(blocks.get(block, [])))
            draw.shuffle(specs)
            for number, spec in specs:
                page = {"id": f"{block}-{number:03d}", "block": block, **spec}
                if block == "mushra":
                    page["slots"] = sorted(conditions, key=lambda _: draw.random())
                elif block == "ab":
                    page["slots"] = draw.sample(spec["pair"], 2)
                out.append(page)
        return out

    def position(self, listener: str, order: list[dict[str, Any]]) -> int:
        done = {p.stem for p in (self.folder / ANSWERS / listener).glob("*.json")}
        return next((i for i, p in enumerate(order) if p["id"] not in done), len(order))

    def stimulus(self, listener: str, page: str, key: str) -> str:
        """The id a stimulus is served under: an HMAC under the experiment's secret."""
        return hmac.new(self.secret, f"{listener}\0{page}\0{key}".encode(), hashlib.sha256).hexdigest()[:24]

    def sounds(self, listener: str, page: dict[str, Any]) -> dict[str, tuple[str, Path]]:
        """``key -> (stimulus id, file)`` of every sound on ``page``."""
        block = page["block"]
        keys: dict[str, Path] = {}
        if block == "headphones":
            for trial in self.experiment["blocks"]["headphones"][0]["trials"]:
                keys[trial["id"]] = self.folder / trial["audio"]
        else:
            audio = self.trials[page["trial"]]["audio"]
            if block in ("mushra", "familiarisation"):
                keys["open-reference"] = self.folder / audio["reference"]
                keys.update({c: self.folder / audio[c] for c in page["slots"]})
            elif block == "ab":
                keys.update({c: self.folder / audio[c] for c in page["slots"]})
            elif block == "acr":
                keys[page["condition"]] = self.folder / audio[page["condition"]]
            else:
                keys["voice"] = self.folder / self.trials[page["reference_trial"]]["audio"]["reference"]
                keys[page["condition"]] = self.folder / audio[page["condition"]]
        return {key: (self.stimulus(listener, page["id"], key), path) for key, path in keys.items()}

    def current(self, listener: str) -> tuple[dict[str, Any] | None, int, int]:
        order = self.pages(listener)
        at = self.position(listener, order)
        return (order[at] if at < len(order) else None), at, len(order)

    def view(self, listener: str) -> dict[str, Any]:
        """What the page is given: the block and stimulus ids, never a condition's name."""
        page, at, total = self.current(listener)
        out: dict[str, Any] = {"listener": listener, "position": at, "total": total, "break_every": BREAK_EVERY}
        if page is None:
            return {**out, "page": None}
        ids = {key: sid for key, (sid, _) in self.sounds(listener, page).items()}
        shown: dict[str, Any] = {"id": page["id"], "block": page["block"]}
        if page["block"] == "headphones":
            shown["trials"] = [ids[t["id"]] for t in self.experiment["blocks"]["headphones"][0]["trials"]]
        elif page["block"] in ("mushra", "familiarisation"):
            shown["reference"] = ids["open-reference"]
            shown["slots"] = [ids[c] for c in page["slots"]]
        elif page["block"] == "ab":
            shown["slots"] = [ids[c] for c in page["slots"]]
        elif page["block"] == "acr":
            shown["sample"] = ids[page["condition"]]
        else:
            shown["voice"], shown["sample"] = ids["voice"], ids[page["condition"]]
        return {**out, "page": shown}

    def audio(self, listener: str, sid: str) -> Path:
        page, _, _ = self.current(listener)
        for known, path in self.sounds(listener, page).values() if page else ():
            if hmac.compare_digest(known, sid):
                return path
        raise Refused(HTTPStatus.NOT_FOUND, "no such sound on your current page")

    def answer(self, listener: str, given: dict[str, Any]) -> dict[str, Any]:
        """Check and store the answer to the listener's current page; return the next view."""
        with self.lock:
            page, _, _ = self.current(listener)
            if page is None or given.get("page") != page["id"]:
                raise Refused(HTTPStatus.CONFLICT, "this page was already answered (in another tab?): reload the page")
            sounds = self.sounds(listener, page)
            condition_of = {sid: key for key, (sid, _) in sounds.items()}
            plays = {condition_of[s]: n for s, n in (given.get("plays") or {}).items() if s in condition_of}
            seconds = given.get("seconds", 0.0)
            body = self._body(page, given, condition_of, plays)
            body.update(plays={k: v for k, v in body.get("plays", plays).items() if k in self.conditions},
                        seconds=seconds if isinstance(seconds, int | float) else 0.0)  # fmt: skip
            try:
                write_answer(self.folder, listener, page["id"], body)
            except ListeningDataError as err:
                raise Refused(HTTPStatus.BAD_REQUEST, str(err).split(": ", 1)[-1]) from None
        return self.view(listener)

    def _body(
        self, page: dict[str, Any], given: dict[str, Any], condition_of: dict[str, str], plays: dict[str, int]
    ) -> dict[str, Any]:
        block = page["block"]
        body: dict[str, Any] = {"block": block, "trial": page["trial"]}
        if block == "headphones":
            trials = self.experiment["blocks"]["headphones"][0]
            responses = given.get("responses")
            if not isinstance(responses, list) or len(responses) != len(trials["trials"]):
                raise Refused(HTTPStatus.BAD_REQUEST, "answer every trial of the headphone check")
            correct = sum(r == t["quietest"] for r, t in zip(responses, trials["trials"], strict=True))
            return {**body, "responses": responses, "trials": len(responses), "correct": correct,
                    "passed": correct >= trials["pass"]}  # fmt: skip
        if block in ("familiarisation", "mushra"):
            unplayed = [c for c in page["slots"] if plays.get(c, 0) < 1]
            if unplayed:
                what = "before rating" if block == "mushra" else "before you go on"
                raise Refused(HTTPStatus.BAD_REQUEST, f"play every sample {what} ({len(unplayed)} not played yet)")
            body["reference_plays"] = plays.get("open-reference", 0)
            if block == "familiarisation":
                return body
            ratings = {condition_of.get(s): r for s, r in (given.get("ratings") or {}).items()}
            if set(ratings) != set(page["slots"]):
                raise Refused(HTTPStatus.BAD_REQUEST, "rate every sample (move each slider)")
            return {**body, "ratings": ratings}
        if block == "ab":
            choice = given.get("choice")
            chosen = "none" if choice == "none" else condition_of.get(choice)
            if chosen is None or chosen not in [*page["slots"], "none"]:
                raise Refused(HTTPStatus.BAD_REQUEST, "choose A, B or no preference")
            return {**body, "pair": page["pair"], "choice": chosen}
        if block == "acr":
            return {**body, "condition": page["condition"], "score": given.get("score")}
        return {**body, "condition": page["condition"], "truth": page["truth"], "answer": given.get("answer"),
                "reference_trial": page["reference_trial"]}  # fmt: skip

    def progress(self) -> list[dict[str, Any]]:
        rows = []
        for name in sorted(set(self.tokens.values())):
            order = self.pages(name)
            answered = sorted((self.folder / ANSWERS / name).glob("*.json"), key=lambda p: p.stat().st_mtime)
            last = time.strftime("%Y-%m-%d %H:%M", time.localtime(answered[-1].stat().st_mtime)) if answered else ""
            rows.append({"listener": name, "done": self.position(name, order), "pages": len(order), "last": last})
        return rows


def handler(study: Study, password: str | None) -> type[BaseHTTPRequestHandler]:
    page = PAGE.read_bytes()
    expected = "Basic " + base64.b64encode(f"listener:{password}".encode()).decode() if password else None

    class Handler(BaseHTTPRequestHandler):
        server_version = "listening"
        sys_version = ""
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # answers are the record; requests are not logged
            pass

        def _send(self, status: int, body: bytes, kind: str, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in {
                **HEADERS,
                "Content-Type": kind,
                "Content-Length": str(len(body)),
                **(extra or {}),
            }.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, value: Any) -> None:
            self._send(status, json.dumps(value).encode(), "application/json")

        def _allowed(self) -> bool:
            if expected is None or hmac.compare_digest(self.headers.get("Authorization", ""), expected):
                return True
            self._send(HTTPStatus.UNAUTHORIZED, b"a password is needed", "text/plain",
                       {"WWW-Authenticate": 'Basic realm="listening test", charset="UTF-8"'})  # fmt: skip
            return False

        def _route(self, routes: dict[str, Callable[[], None]]) -> None:
            if not self._allowed():
                return
            path = self.path.split("?", 1)[0]
            action = routes.get(path)
            if action is None and path.startswith("/api/audio/") and "GET" in self.command:
                action = lambda: self._audio(path.removeprefix("/api/audio/"))  # noqa: E731
            if action is None:
                self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
                return
            try:
                action()
            except Refused as refused:
                self._json(refused.status, {"error": str(refused)})

        def do_GET(self) -> None:  # noqa: N802
            self._route({"/": lambda: self._send(HTTPStatus.OK, page, "text/html; charset=utf-8"),
                         "/progress": self._progress})  # fmt: skip

        def do_HEAD(self) -> None:  # noqa: N802
            self.do_GET()

        def do_POST(self) -> None:  # noqa: N802
            self._route({"/api/start": self._start, "/api/resume": self._resume, "/api/page": self._page,
                         "/api/answer": self._answer})  # fmt: skip

        def _read(self) -> dict[str, Any]:
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self.close_connection = True
                raise Refused(HTTPStatus.LENGTH_REQUIRED, "a body with its length is needed")
            if int(length) > MAX_BODY:
                self.close_connection = True  # the body is not read
                raise Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"at most {MAX_BODY} bytes")
            try:
                value = json.loads(self.rfile.read(int(length)) or b"{}")
            except ValueError:
                raise Refused(HTTPStatus.BAD_REQUEST, "not JSON") from None
            if not isinstance(value, dict):
                raise Refused(HTTPStatus.BAD_REQUEST, "not a JSON object")
            return value

        def _who(self) -> str:
            return study.listener(self.headers.get("X-Listener-Token"))

        def _start(self) -> None:
            name, token = study.start(self._read().get("name"))
            self._json(HTTPStatus.OK, {"listener": name, "token": token, "resume": f"#resume={token}"})

        def _resume(self) -> None:
            self._json(HTTPStatus.OK, study.view(study.listener(self._read().get("token"))))

        def _page(self) -> None:
            self._read()
            self._json(HTTPStatus.OK, study.view(self._who()))

        def _answer(self) -> None:
            given = self._read()
            self._json(HTTPStatus.OK, study.answer(self._who(), given))

        def _audio(self, sid: str) -> None:
            path = study.audio(self._who(), sid)
            self._send(HTTPStatus.OK, path.read_bytes(), "audio/wav")

        def _progress(self) -> None:
            if not ipaddress.ip_address(self.client_address[0]).is_loopback:
                raise Refused(HTTPStatus.NOT_FOUND, "not found")
            cells = [(html.escape(r["listener"]), f"{r['done']} of {r['pages']}", r["last"]) for r in study.progress()]
            rows = "".join(f"<tr><td>{a}</td><td>{b}</td><td>{c}</td></tr>" for a, b, c in cells)
            title = html.escape(study.folder.name)
            body = (f"<!doctype html><meta charset=utf-8><title>Progress</title><h1>{title}</h1><table>"
                    f"<tr><th>listener</th><th>pages</th><th>last answer</th></tr>{rows}</table>")  # fmt: skip
            self._send(HTTPStatus.OK, body.encode(), "text/html; charset=utf-8")

    return Handler


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def public_address(host: str) -> str:
    """An address others can open: ``host`` itself, or this machine's for a wildcard."""
    if host not in ("0.0.0.0", "::", ""):
        return host
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # no packet is sent: it picks the interface
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed
            return probe.getsockname()[0]
        except OSError:
            return socket.gethostname()


def read_password(password_file: str | Path | None) -> str | None:
    if password_file is not None:
        try:
            return Path(password_file).read_text().strip() or None
        except OSError as err:
            raise ListeningDataError(f"--password-file {password_file}: {err}") from None
    return os.environ.get("LISTENING_PASSWORD") or None


def make_server(
    folder: str | Path, host: str = "127.0.0.1", port: int = 7860, password: str | None = None
) -> ThreadingHTTPServer:
    """The server of an experiment folder (not yet serving); another address than loopback needs a password."""
    if not is_loopback(host) and not password:
        raise ListeningDataError(
            f"--host {host} serves the test to the network: set a password (--password-file FILE or "
            f"$LISTENING_PASSWORD), or keep the default 127.0.0.1 and let listeners tunnel in: "
            f"ssh -N -L {port}:127.0.0.1:{port} <this machine>, then open http://127.0.0.1:{port}/"
        )
    study = Study(folder)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("Server", (ThreadingHTTPServer,), {"address_family": family, "daemon_threads": True})
    return server_class((host, port), handler(study, password))


def serve(folder: str | Path, host: str = "127.0.0.1", port: int = 7860, password: str | None = None) -> None:
    """Serve until interrupted."""
    server = make_server(folder, host, port, password)
    port = server.server_address[1]
    shown = public_address(host)
    shown = f"[{shown}]" if ":" in shown else shown
    print(f"listening test of {Path(folder).resolve()} at http://{shown}:{port}/"
          + (" (password: listener / the one you set)" if password else "")
          + f"; progress at http://127.0.0.1:{port}/progress on this machine (Ctrl-C stops it)",
          flush=True)  # fmt: skip
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
