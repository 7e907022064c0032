"""Serve one flowray scorer over HTTP (`python -m rewards serve --scorer shapes_geneval`), for the `remote`
scorer (rewards/remote.py) or any client that speaks the JSON of rewards/transport.py.

    GET  /health  -> {"status": "ok", "scorer": name}
    GET  /stats   -> {"scorer", "requests_scored", "images_scored", "cache_hits"}
    POST /score   -> scores (rewards/transport.py)

Safety: loopback (127.0.0.1) by default; any other address needs a bearer token (`--token-file`), checked
on every path in constant time. Bodies are JSON with PNG or safetensors images (never pickle), read only
up to the Content-Length the server accepts, every size and shape checked before decoding. There is no
TLS: beyond a private network, put the server behind a TLS proxy.

The scorer runs one request at a time (a model on one device); requests are answered by the RewardWorker
(rewards/worker.py), which caches answers by request id, so a client's retry after a lost answer is
answered from the cache, not scored again.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import sys
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from rewards.transport import Limits, TransportError, parse_request, result_to_json
from rewards.worker import RewardWorker

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'; '0.0.0.0' (every interface) is not."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """A reward server reachable from other machines must authenticate its callers."""
    if not is_loopback(host) and not token:
        raise ValueError(f"refusing to serve on {host!r} without a token: a non-loopback address needs --token-file "
                         "(a file holding a secret bearer token)")


class RewardServer:
    """A threading HTTP server in front of one RewardWorker. `port=0` picks a free port (`self.port`)."""

    def __init__(self, worker: RewardWorker, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                 limits: Limits | None = None):
        check_bind(host, token)
        self.worker, self.token, self.limits = worker, token, limits or Limits()
        self.lock = threading.Lock()  # one request in the scorer at a time
        self.stats = {"requests_scored": 0, "images_scored": 0, "cache_hits": 0}
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True
        self.host, self.port = host, self.httpd.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def authorized(self, header: str | None) -> bool:
        if self.token is None:
            return True
        expected = f"Bearer {self.token}".encode()
        return hmac.compare_digest((header or "").encode(), expected)

    def score(self, body) -> tuple[int, dict]:
        """(HTTP status, answer) for one decoded /score body."""
        try:
            request_id, images, prompts, metadata = parse_request(body, self.limits)
        except TransportError as err:
            return err.status, {"error": str(err)}
        request_id = request_id or uuid.uuid4().hex
        with self.lock:
            served = self.worker.requests_served
            response = self.worker.score(request_id, images, prompts, metadata)
            fresh = self.worker.requests_served != served
            if response.error is None:
                key = "requests_scored" if fresh else "cache_hits"
                self.stats[key] += 1
                self.stats["images_scored"] += len(prompts) if fresh else 0
        if response.error is not None:
            status = HTTPStatus.BAD_REQUEST if response.input_error else HTTPStatus.INTERNAL_SERVER_ERROR
            return status, {"error": response.error.splitlines()[0], "request_id": request_id}
        return HTTPStatus.OK, {"request_id": request_id, "scorer": self.worker.scorer_name,
                               "seconds": response.seconds, **result_to_json(response.result)}

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.1)

    def start(self) -> RewardServer:
        """Serve on a daemon thread (tests, notebooks); `shutdown` stops it."""
        threading.Thread(target=self.serve_forever, name="reward-server", daemon=True).start()
        return self

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(server: RewardServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the client reuses its connections

        def _answer(self, status: int, body: dict) -> None:
            data = json.dumps(body, allow_nan=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == HTTPStatus.UNAUTHORIZED:
                self.send_header("WWW-Authenticate", "Bearer")
            self.end_headers()
            self.wfile.write(data)

        def _refuse_unauthorized(self) -> bool:
            if server.authorized(self.headers.get("Authorization")):
                return False
            self.close_connection = True  # its body (if any) is never read
            self._answer(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"})
            return True

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self._refuse_unauthorized():
                return
            if self.path == "/health":
                self._answer(HTTPStatus.OK, {"status": "ok", "scorer": server.worker.scorer_name})
            elif self.path == "/stats":
                with server.lock:
                    self._answer(HTTPStatus.OK, {"scorer": server.worker.scorer_name, **server.stats})
            else:
                self._answer(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path!r}: GET /health, /stats"})

        def do_POST(self) -> None:  # noqa: N802
            if self._refuse_unauthorized():
                return
            if self.path != "/score":
                self.close_connection = True
                self._answer(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path!r}: POST /score"})
                return
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self.close_connection = True
                self._answer(HTTPStatus.LENGTH_REQUIRED, {"error": "a Content-Length header is required"})
                return
            if int(length) > server.limits.max_body_bytes:
                self.close_connection = True  # the body stays unread
                self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                             {"error": f"body of {int(length)} bytes, more than the server's {server.limits.max_body_bytes}"})
                return
            try:
                body = json.loads(self.rfile.read(int(length)))
            except (ValueError, UnicodeDecodeError) as err:
                self._answer(HTTPStatus.BAD_REQUEST, {"error": f"the body is not JSON: {err}"})
                return
            self._answer(*server.score(body))

        def log_request(self, code="-", size="-") -> None:
            if isinstance(code, int) and code >= 400:  # failures only: a run sends thousands of requests
                super().log_request(code, size)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
            sys.stderr.write(f"[reward-server {time.strftime('%H:%M:%S')}] {format % args}\n")

    return Handler
