"""A stand-in for the Hugging Face Hub on 127.0.0.1, serving the four endpoints ``HfFileSystem`` and
``HfApi.list_repo_refs`` use to read a model repo by byte range:

- ``GET /api/models/{repo}/revision/{rev}``   repo info (does the revision exist; its commit sha)
- ``GET /api/models/{repo}/tree/{rev}[/dir]`` one directory level of the tree (type, path, size, oid, lfs)
- ``GET /api/models/{repo}/refs``             branches and tags
- ``GET /{repo}/resolve/{rev}/{path}``        the file's bytes, honouring ``Range`` (206)

Each branch is a local directory ``root/{org}/{repo}/{branch}/``. Errors carry the Hub's ``X-Error-Code`` header so
``huggingface_hub`` raises the same exceptions it raises against huggingface.co. ``log`` records
(path, range, bytes) of every file read. What is not imitated: authentication, redirects to a CDN, pagination.
"""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


class HubServer:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.log: list[tuple[str, str, int]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                server._handle(self)

            def do_HEAD(self):
                server._handle(self, head=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> "HubServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- helpers ------------------------------------------------------------------------------------
    def _branches(self, repo: str) -> list[str]:
        d = self.root / repo
        return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []

    def _branch(self, repo: str, rev: str) -> str | None:
        rev = unquote(rev)
        for b in self._branches(repo):
            if rev in (b, _sha(f"{repo}@{b}")):
                return b
        return None

    @staticmethod
    def _send(h, status: int, body: bytes = b"", ctype: str = "application/json", headers: dict | None = None,
              head: bool = False):
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _error(self, h, status: int, code: str, head: bool = False):
        self._send(h, status, json.dumps({"error": code}).encode(), headers={"X-Error-Code": code}, head=head)

    def _entry(self, repo: str, branch: str, f: Path) -> dict:
        rel = f.relative_to(self.root / repo / branch).as_posix()
        if f.is_dir():
            return {"type": "directory", "oid": _sha(rel), "path": rel}
        size = f.stat().st_size
        e = {"type": "file", "oid": _sha(f"{branch}/{rel}/{size}"), "size": size, "path": rel}
        if f.suffix == ".safetensors":
            e["lfs"] = {"oid": hashlib.sha256(f.read_bytes()).hexdigest(), "size": size, "pointerSize": 134}
        return e

    def _handle(self, h, head: bool = False):
        path = urlparse(h.path).path
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "models"] and len(parts) >= 5:
            repo, verb, rest = "/".join(parts[2:4]), parts[4], parts[5:]
            if not (self.root / repo).is_dir():
                return self._error(h, 404, "RepoNotFound", head)
            if verb == "refs":
                branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": _sha(f"{repo}@{b}")}
                            for b in self._branches(repo)]
                return self._send(h, 200, json.dumps({"branches": branches, "tags": [], "converts": []}).encode(),
                                  head=head)
            branch = self._branch(repo, rest[0]) if rest else "main"
            if branch is None:
                return self._error(h, 404, "RevisionNotFound", head)
            if verb == "revision":
                files = [p.relative_to(self.root / repo / branch).as_posix()
                         for p in sorted((self.root / repo / branch).rglob("*")) if p.is_file()]
                info = {"id": repo, "sha": _sha(f"{repo}@{branch}"), "siblings": [{"rfilename": f} for f in files],
                        "private": False, "disabled": False, "gated": False}
                return self._send(h, 200, json.dumps(info).encode(), head=head)
            if verb == "tree":
                d = self.root / repo / branch / "/".join(unquote(p) for p in rest[1:])
                if not d.is_dir():
                    return self._error(h, 404, "EntryNotFound", head)
                body = json.dumps([self._entry(repo, branch, f) for f in sorted(d.iterdir())]).encode()
                return self._send(h, 200, body, head=head)
            return self._error(h, 404, "EntryNotFound", head)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo = "/".join(parts[:2])
            branch = self._branch(repo, parts[3]) if (self.root / repo).is_dir() else None
            f = self.root / repo / (branch or "?") / "/".join(unquote(p) for p in parts[4:])
            if branch is None or not f.is_file():
                return self._error(h, 404, "EntryNotFound", head)
            data = f.read_bytes()
            rng = h.headers.get("Range") or h.headers.get("range")
            if rng:
                lo, _, hi = rng.split("=", 1)[1].partition("-")
                lo, hi = int(lo), min(int(hi) if hi else len(data) - 1, len(data) - 1)
                body = data[lo:hi + 1]
                self.log.append(("/".join(parts[4:]), rng, 0 if head else len(body)))
                return self._send(h, 206, body, "application/octet-stream",
                                  {"Content-Range": f"bytes {lo}-{hi}/{len(data)}", "ETag": _sha(str(f))}, head)
            self.log.append(("/".join(parts[4:]), "", 0 if head else len(data)))
            return self._send(h, 200, data, "application/octet-stream", {"ETag": _sha(str(f))}, head)
        return self._error(h, 404, "RepoNotFound", head)
