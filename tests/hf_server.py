"""A local stand-in for the Hugging Face Hub and Google Drive, for download tests.

It implements just what ``huggingface_hub.hf_hub_download`` (with Xet disabled) and
``gdown.download(url=...)`` need, over plain HTTP on 127.0.0.1:

* ``HEAD``/``GET /{repo_id}/resolve/{revision}/{filename}``: the file, with the headers
  huggingface_hub requires (``ETag``, ``X-Repo-Commit``, ``Content-Length``), ``Range``
  requests (huggingface_hub resumes interrupted transfers with them), and the Hub's
  ``404`` + ``X-Error-Code: EntryNotFound`` for missing files.
* ``GET /uc?id={file_id}``: a Google Drive file (point ``HCAST_GDRIVE_URL_TEMPLATE`` at
  ``server.gdrive_url_template``).

Every request is logged (``server.requests``), and transfers can be cut short on
purpose (``server.truncate``) to test interrupted downloads. The server binds
127.0.0.1 only, serves from a daemon thread, times out idle connections, and stops
itself after ``max_lifetime`` seconds even if a test forgets to close it.

Use :func:`use_local_hub` to point huggingface_hub at it for one test.
"""
from __future__ import annotations

import hashlib
import http.server
import os
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # the one revision every repo has

_RESOLVE_RE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


@dataclass
class Request:
    method: str
    path: str
    headers: Dict[str, str] = field(default_factory=dict)  # lower-case names


class LocalHub:
    """A fake Hub + Google Drive serving in-memory files. Use as a context manager.

    Attributes:
        repos: ``{repo_id: {filename: bytes}}``; add files with :meth:`add_file` or
            :meth:`add_folder`.
        gdrive: ``{file_id: bytes}``.
        truncate: ``{filename or file_id: n}``: GETs of that file announce the full
            ``Content-Length`` but stop at byte ``n`` of the file (also when resuming
            with ``Range``) and close the connection.
        requests: every request received, in order.
    """

    def __init__(self, max_lifetime: float = 120.0) -> None:
        self.repos: Dict[str, Dict[str, bytes]] = {}
        self.gdrive: Dict[str, bytes] = {}
        self.truncate: Dict[str, int] = {}
        self.requests: List[Request] = []
        self._lock = threading.Lock()
        self._max_lifetime = max_lifetime
        self._httpd: Optional[http.server.ThreadingHTTPServer] = None
        self._timer: Optional[threading.Timer] = None

    # -- content ------------------------------------------------------------------
    def add_file(self, repo_id: str, filename: str, data: bytes) -> None:
        self.repos.setdefault(repo_id, {})[filename] = bytes(data)

    def add_folder(self, repo_id: str, folder: os.PathLike) -> None:
        """Serve every file under ``folder`` (e.g. what ``save_for_hf`` wrote) as ``repo_id``."""
        folder = Path(folder)
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                self.add_file(repo_id, p.relative_to(folder).as_posix(), p.read_bytes())

    def gets(self, path_suffix: str) -> List[Request]:
        """GET requests whose path ends with ``path_suffix``."""
        with self._lock:
            return [r for r in self.requests if r.method == "GET" and r.path.endswith(path_suffix)]

    # -- addresses ----------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def gdrive_url_template(self) -> str:
        return self.url + "/uc?id={id}"

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> "LocalHub":
        hub = self

        class Handler(_Handler):
            local_hub = hub

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True).start()
        self._timer = threading.Timer(self._max_lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if self._timer is not None:
            self._timer.cancel()
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- lookup -------------------------------------------------------------------
    def _resolve(self, path: str) -> Tuple[int, Optional[bytes], str, Dict[str, str]]:
        """(status, body, name used for truncation, extra headers) for a request path."""
        parsed = urllib.parse.urlsplit(path)
        if parsed.path == "/uc":
            file_id = urllib.parse.parse_qs(parsed.query).get("id", [""])[0]
            data = self.gdrive.get(file_id)
            if data is None:
                return 404, None, file_id, {}
            return 200, data, file_id, {"Content-Disposition": f'attachment; filename="{file_id}.pth"'}
        m = _RESOLVE_RE.match(urllib.parse.unquote(parsed.path))
        if m is None:
            return 404, None, "", {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}
        repo, rev, filename = m["repo"], m["rev"], m["file"]
        if repo not in self.repos:
            return 404, None, filename, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}
        if rev not in ("main", COMMIT):
            return 404, None, filename, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"}
        data = self.repos[repo].get(filename)
        if data is None:
            return 404, None, filename, {
                "X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found", "X-Repo-Commit": COMMIT}
        return 200, data, filename, {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}


class _Handler(http.server.BaseHTTPRequestHandler):
    local_hub: LocalHub
    protocol_version = "HTTP/1.1"
    timeout = 10  # seconds an idle connection is kept

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _record(self) -> None:
        with self.local_hub._lock:
            self.local_hub.requests.append(
                Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        self._record()
        status, data, name, headers = self.local_hub._resolve(self.path)
        if data is None:
            msg = headers.get("X-Error-Message", "Not found").encode()
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            if body:
                self.wfile.write(msg)
            return
        start, status = 0, 200
        rng = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "").strip())
        if rng and int(rng[1]) < len(data):
            start, status = int(rng[1]), 206
        payload = data[start:]
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Content-Type", "application/octet-stream")
        cut = self.local_hub.truncate.get(name) if body else None
        if cut is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        if not body:
            return
        if cut is not None:
            # announce everything, send the file up to byte `cut`, hang up: an interrupted transfer
            self.wfile.write(payload[:max(cut - start, 0)])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)


def use_local_hub(monkeypatch, hub: LocalHub, home: os.PathLike, offline: bool = False) -> Path:
    """Point huggingface_hub (and hcast's Google Drive downloads) at ``hub`` for one test.

    huggingface_hub reads its environment once, at import, into
    ``huggingface_hub.constants``; the library reads those attributes at call time, so
    the environment *and* the constants are patched (``monkeypatch`` restores both).
    Xet is disabled: the local server speaks plain HTTP only.

    Returns:
        The hub cache folder (``home/hub``).
    """
    from huggingface_hub import constants

    home = Path(home)
    values = {
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_ENDPOINT": hub.url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "HCAST_GDRIVE_URL_TEMPLATE": hub.gdrive_url_template,
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HOME", values["HF_HOME"])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", values["HF_HUB_CACHE"])
    monkeypatch.setattr(constants, "HF_ASSETS_CACHE", values["HF_ASSETS_CACHE"])
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True, raising=False)
    return home / "hub"


def set_offline(monkeypatch, offline: bool) -> None:
    """Switch huggingface_hub's offline mode (``HF_HUB_OFFLINE``) within a test."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
