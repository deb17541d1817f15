"""A real S3 API on 127.0.0.1 for the remote-storage tests: moto's server mode, behind a small HTTP proxy that
logs what it serves and can misbehave on demand.

The proxy handles one request per connection (it forces ``Connection: close``) and can:
- ``deny``: answer requests whose path contains one of these strings with S3's own ``403 AccessDenied`` XML
  (moto's server does not enforce IAM or bucket policies without its auth mode, so the denial is simulated here,
  in the exact form a real S3 sends it);
- ``cut``: for object GETs whose path contains one of these strings, send the response head and half the body,
  then close the socket (a connection dropped mid-read).
``log`` records (method, path, status, body bytes) for every request served.
"""
from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
          b'<Message>Access Denied</Message><RequestId>opd-test</RequestId></Error>')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data, b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name:
            return v.strip()
    return None


@dataclass
class Proxy:
    upstream: int
    deny: tuple[str, ...] = ()
    cut: tuple[str, ...] = ()
    log: list[tuple[str, str, int, int, str]] = field(default_factory=list)  # method, path, status, bytes, range

    def start(self) -> "Proxy":
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._sock.close()

    def object_bytes(self) -> int:
        """Body bytes of object GETs served (listings excluded)."""
        return sum(n for m, p, s, n, _ in self.log if m == "GET" and "?" not in p and s < 300)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            head, body = _read_head(client)
            if not head:
                return
            method, path = head.split(b" ")[:2]
            method, path = method.decode(), path.decode()
            rng = (_header(head, b"range") or b"").decode()
            n = int(_header(head, b"content-length") or 0)
            while len(body) < n:
                chunk = client.recv(65536)
                if not chunk:
                    break
                body += chunk
            if any(d in path for d in self.deny):
                self.log.append((method, path, 403, 0, rng))  # logged before the client can see the answer
                client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: "
                               + str(len(DENIED)).encode() + b"\r\nConnection: close\r\n\r\n" + DENIED)
                return
            lines = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"connection:")]
            with socket.create_connection(("127.0.0.1", self.upstream)) as up:
                up.sendall(b"\r\n".join(lines) + b"\r\nConnection: close\r\n\r\n" + body)
                resp = b""
                while True:
                    chunk = up.recv(1 << 20)
                    if not chunk:
                        break
                    resp += chunk
            rhead, _, rbody = resp.partition(b"\r\n\r\n")
            status = int(rhead.split(b" ")[1]) if rhead else 0
            if method == "GET" and any(c in path for c in self.cut) and len(rbody) > 1:
                self.log.append((method, path, -1, len(rbody) // 2, rng))
                client.sendall(rhead + b"\r\n\r\n" + rbody[: len(rbody) // 2])
                client.shutdown(socket.SHUT_RDWR)
                return
            self.log.append((method, path, status, len(rbody) if method == "GET" else 0, rng))
            client.sendall(resp)


class S3Server:
    """moto's ``ThreadedMotoServer`` on a free port, with a bucket and a proxy in front."""

    def __init__(self):
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request lines on stderr
        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    def start(self) -> "S3Server":
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="testing",
                            aws_secret_access_key="testing")

    def upload(self, local_dir, bucket: str, prefix: str) -> None:
        """Copy a directory tree into ``s3://bucket/prefix/`` (creating the bucket)."""
        from pathlib import Path

        c = self.client()
        try:
            c.create_bucket(Bucket=bucket)
        except c.exceptions.BucketAlreadyOwnedByYou:
            pass
        root = Path(local_dir)
        for f in sorted(root.rglob("*")):
            if f.is_file():
                c.upload_file(str(f), bucket, f"{prefix}/{f.relative_to(root).as_posix()}")
