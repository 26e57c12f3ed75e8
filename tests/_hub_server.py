"""A stand-in for the Hugging Face Hub on 127.0.0.1: just the endpoints ``snapshot_download``
(huggingface_hub 2.x) calls, pointed at with ``HF_ENDPOINT``.

- ``GET /api/models/{repo}[/revision/{rev}]``: repo info (``sha`` = the commit)
- ``GET /api/models/{repo}/tree/{rev}?recursive=...``: the file list (one page)
- ``HEAD|GET /{repo}/resolve/{rev}/{file}``: ``X-Repo-Commit``, ``ETag``, ``Content-Length``; GET
  honours ``Range: bytes=N-`` (206), which is how an interrupted transfer resumes

Errors carry the Hub's ``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``), which huggingface_hub turns into its typed exceptions.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class FakeHub:
    """``repos``: {repo_id: {relative path: bytes}}; each repo has one commit, branch ``main``.
    ``cut_once``: {(repo_id, path)}: the first GET of that file sends half its bytes, then hangs up."""

    def __init__(self, repos: dict[str, dict[str, bytes]], cut_once: set[tuple[str, str]] = frozenset()):
        self.repos = repos
        self.commits = {r: hashlib.sha1(r.encode()).hexdigest() for r in repos}
        self.cut_once = set(cut_once)
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)

    def _commit(self, repo: str, rev: str) -> str | None:
        return self.commits[repo] if rev in ("main", self.commits[repo]) else None

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def _send(self, code: int, body: bytes = b"", headers: dict | None = None) -> None:
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, str(v))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _error(self, code: str) -> None:
                self._send(404, json.dumps({"error": code}).encode(), {"X-Error-Code": code})

            def _json(self, obj) -> None:
                self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"})

            def do_GET(self) -> None:
                path = unquote(urlsplit(self.path).path)
                with hub._lock:
                    hub.requests.append((self.command, path, self.headers.get("Range")))
                if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path):
                    return self._info(m[1], m[2] or "main")
                if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)", path):
                    return self._tree(m[1], m[2])
                if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                    return self._file(m[1], m[2], m[3])
                self._send(404)

            do_HEAD = do_GET

            def _info(self, repo: str, rev: str) -> None:
                if repo not in hub.repos:
                    return self._error("RepoNotFound")
                if (sha := hub._commit(repo, rev)) is None:
                    return self._error("RevisionNotFound")
                self._json({"id": repo, "sha": sha, "siblings": [{"rfilename": p} for p in hub.repos[repo]]})

            def _tree(self, repo: str, rev: str) -> None:
                if repo not in hub.repos:
                    return self._error("RepoNotFound")
                if hub._commit(repo, rev) is None:
                    return self._error("RevisionNotFound")
                self._json([{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                            for p, b in hub.repos[repo].items()])

            def _file(self, repo: str, rev: str, name: str) -> None:
                if repo not in hub.repos:
                    return self._error("RepoNotFound")
                if (sha := hub._commit(repo, rev)) is None:
                    return self._error("RevisionNotFound")
                if name not in hub.repos[repo]:
                    return self._send(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha})
                data = hub.repos[repo][name]
                head = {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                        "Accept-Ranges": "bytes"}
                start = 0
                if self.command == "GET" and (rng := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")):
                    start = int(rng[1])
                    self.send_response(206)
                    head["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                else:
                    self.send_response(200)
                for k, v in head.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if self.command == "HEAD":
                    return
                with hub._lock:
                    cut = (repo, name) in hub.cut_once
                    hub.cut_once.discard((repo, name))
                if cut:  # promise the whole file, send half, hang up: the client must resume
                    self.wfile.write(data[start:start + (len(data) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

        return Handler
