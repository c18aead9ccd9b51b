"""A small Hugging Face Hub double on 127.0.0.1 for the publishing tests.

It speaks the part of the Hub's HTTP API that the unpatched ``huggingface_hub`` client uses to
create a repo, commit a folder (preupload, LFS batch + basic transfer, NDJSON commit), tag a
commit and download files (``resolve`` with ``X-Repo-Commit`` / ``ETag``). A commit is applied
only if every LFS object it names has arrived, as on the Hub. Every request is recorded, with
its headers, so tests can check what was (or was not) sent. Xet storage is not spoken: the
client must run with ``HF_HUB_DISABLE_XET=1``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import yaml

LFS_SUFFIXES = (".bin", ".onnx", ".safetensors", ".wav", ".png")


class HubState:
    def __init__(self, token: str) -> None:
        self.token = token
        self.repos: dict[str, dict] = {}  # repo_id -> {"refs": {name: oid}, "commits": {oid: {"files", "message"}}}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.fail_lfs_upload_after: int | None = None  # refuse LFS uploads after this many succeeded
        self.lock = threading.Lock()

    def resolve(self, repo_id: str, revision: str) -> str | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            return None
        if revision in repo["refs"]:
            return repo["refs"][revision]
        return revision if revision in repo["commits"] else None

    def commits(self, repo_id: str) -> list[str]:
        return list(self.repos.get(repo_id, {}).get("commits", {}))


class _Handler(BaseHTTPRequestHandler):
    state: HubState
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    # -- plumbing --------------------------------------------------------------------------
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes | dict | list = b"", headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if isinstance(body, dict | list) else body
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        if isinstance(body, dict | list):
            self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": message}, {"X-Error-Message": message})

    def _authorised(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {self.state.token}":
            return True
        self._error(401, "Invalid credentials in Authorization header")
        return False

    def _record(self) -> str:
        path = urlparse(self.path).path
        with self.state.lock:
            self.state.requests.append((self.command, path, dict(self.headers)))
        return path

    # -- routes -----------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = self._record()
        if path == "/api/models":
            return self._send(200, [])
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if match:
            repo_id, revision, name = match[1], unquote(match[2]), unquote(match[3])
            commit = self.state.resolve(repo_id, revision)
            if commit is None:
                return self._send(404, b"", {"X-Error-Code": "RevisionNotFound" if repo_id in self.state.repos
                                             else "RepoNotFound", "X-Error-Message": "not found"})  # fmt: skip
            files = self.state.repos[repo_id]["commits"][commit]["files"]
            if name not in files:
                return self._send(404, b"", {"X-Error-Code": "EntryNotFound", "X-Error-Message": "no such file"})
            data = files[name]
            digest = hashlib.sha256(data).hexdigest()
            return self._send(200, data, {"X-Repo-Commit": commit, "ETag": f'"{digest}"'})
        self._error(404, f"no route GET {path}")

    def do_PUT(self) -> None:
        path = self._record()
        match = re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", path)
        if not match:
            return self._error(404, f"no route PUT {path}")
        data = self._body()
        with self.state.lock:
            limit = self.state.fail_lfs_upload_after
            if limit is not None and len(self.state.lfs) >= limit:
                return self._error(403, "storage quota exceeded (a test's injected failure)")
            if hashlib.sha256(data).hexdigest() != match[1]:
                return self._error(400, "sha256 mismatch")
            self.state.lfs[match[1]] = data
        self._send(200, b"")

    def do_POST(self) -> None:
        path = self._record()
        body = self._body()
        if path == "/api/repos/create":
            if not self._authorised():
                return
            request = json.loads(body)
            repo_id = f"{request['organization']}/{request['name']}" if request.get("organization") else request["name"]
            with self.state.lock:
                if repo_id in self.state.repos:  # the Hub answers with the repo's url too
                    message = "You already created this model repo"
                    url = f"http://{self.headers['Host']}/{repo_id}"
                    return self._send(409, {"error": message, "url": url}, {"X-Error-Message": message})
                self.state.repos[repo_id] = {"refs": {"main": None}, "commits": {}, "private": request.get("private")}
            return self._send(200, {"url": f"http://{self.headers['Host']}/{repo_id}", "name": repo_id})
        if path == "/api/validate-yaml":  # the card's metadata, checked before an upload
            content = json.loads(body)["content"]
            try:
                yaml.safe_load(content.split("---")[1]) if content.startswith("---") else None
            except (yaml.YAMLError, IndexError) as err:
                return self._send(400, {"errors": [{"message": str(err)}], "warnings": []})
            return self._send(200, {"errors": [], "warnings": []})
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit|tag|branch)/(.+)", path)
        if match:
            if not self._authorised():
                return
            repo_id, action, revision = match[1], match[2], unquote(match[3])
            if repo_id not in self.state.repos:
                return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return getattr(self, f"_{action}")(repo_id, revision, body)
        match = re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
        if match:
            if not self._authorised():
                return
            request = json.loads(body)
            host = self.headers["Host"]
            objects = []
            for obj in request["objects"]:
                entry = {"oid": obj["oid"], "size": obj["size"]}
                if obj["oid"] not in self.state.lfs:
                    entry["actions"] = {"upload": {"href": f"http://{host}/lfs-upload/{obj['oid']}", "header": {}}}
                objects.append(entry)
            return self._send(200, {"transfer": "basic", "objects": objects})
        self._error(404, f"no route POST {path}")

    def _preupload(self, repo_id: str, revision: str, body: bytes) -> None:
        files = json.loads(body)["files"]
        modes = [
            {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular",
             "shouldIgnore": False}
            for f in files
        ]  # fmt: skip
        self._send(200, {"files": modes})

    def _commit(self, repo_id: str, revision: str, body: bytes) -> None:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        repo = self.state.repos[repo_id]
        with self.state.lock:
            parent = repo["refs"].get(revision)
            files = dict(repo["commits"][parent]["files"]) if parent else {}
            header = {}
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "header":
                    header = value
                elif key == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "lfsFile":
                    if value["oid"] not in self.state.lfs:
                        return self._error(422, f"LFS object {value['oid'][:12]} of {value['path']} was never uploaded")
                    files[value["path"]] = self.state.lfs[value["oid"]]
                elif key in ("deletedFile", "deletedFolder"):
                    files = {k: v for k, v in files.items() if not k.startswith(value["path"])}
            oid = secrets.token_hex(20)
            repo["commits"][oid] = {"files": files, "message": header.get("summary", "")}
            repo["refs"][revision] = oid
        host = self.headers["Host"]
        self._send(200, {"commitUrl": f"http://{host}/{repo_id}/commit/{oid}", "commitOid": oid})

    def _tag(self, repo_id: str, revision: str, body: bytes) -> None:
        commit = self.state.resolve(repo_id, revision)
        if commit is None:
            return self._error(404, "revision not found")
        self.state.repos[repo_id]["refs"][json.loads(body)["tag"]] = commit
        self._send(200, {})

    def _branch(self, repo_id: str, revision: str, body: bytes) -> None:
        refs = self.state.repos[repo_id]["refs"]
        if revision in refs:
            return self._error(409, "Reference already exists")
        refs[revision] = refs.get("main")
        self._send(200, {})


class HubServer:
    """``with HubServer(token) as hub:`` -> ``hub.url``, ``hub.state``."""

    def __init__(self, token: str) -> None:
        self.state = HubState(token)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
