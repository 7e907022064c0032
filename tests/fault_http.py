"""Fault-injecting HTTP servers on real loopback sockets, and flowray's own reward server in a subprocess
(`served`), for the remote scorers' tests.

`FaultServer` answers POSTs with `answer(body) -> (status, dict)` unless the schedule names a fault for
this try of this request. A request is keyed by `key(body)` (the flowray request id, or the judge's
question); `schedule(key, index, attempt)` sees the key, its order of first arrival and the try number
(0, 1, ...) and returns None or a fault:
  "500"        HTTP 500 with a JSON error, nothing forwarded;
  "malformed"  HTTP 200 whose body is not JSON, nothing forwarded;
  "timeout"    no answer for `hang_s` (past the client's timeout), nothing forwarded;
  "slow"       the request IS answered (forwarded, so a real server scores it), but only after `hang_s`:
               the client has given up and retries; a server that caches by request id must not score twice.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

FAULTS = ("500", "malformed", "timeout", "slow")


class FaultServer:
    def __init__(self, answer: Callable[[dict], tuple[int, dict]], key: Callable[[dict], str],
                 schedule: Callable[[str, int, int], str | None], hang_s: float = 1.0):
        self.answer, self.key, self.schedule, self.hang_s = answer, key, schedule, hang_s
        self.lock = threading.Lock()
        self.order: dict[str, int] = {}
        self.tries: dict[str, int] = defaultdict(int)
        self.faults: dict[str, list[str | None]] = defaultdict(list)  # key -> the fault of each try
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def _plan(self, body: dict) -> str | None:
        key = self.key(body)
        with self.lock:
            index = self.order.setdefault(key, len(self.order))
            attempt = self.tries[key]
            self.tries[key] += 1
            fault = self.schedule(key, index, attempt)
            self.faults[key].append(fault)
        return fault

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except OSError:  # the client gave up on a slow answer
                    pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fault = server._plan(body)
                if fault == "500":
                    return self._send(500, b'{"error": "injected"}')
                if fault == "malformed":
                    return self._send(200, b'{"reward": [0.5, tru')
                if fault == "timeout":
                    time.sleep(server.hang_s)
                    self.close_connection = True
                    return None
                status, answer = server.answer(body)
                if fault == "slow":
                    time.sleep(server.hang_s)
                return self._send(status, json.dumps(answer).encode())

            def log_message(self, *args):
                pass

        return Handler

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def forward_to(url: str, token: str | None = None) -> Callable[[dict], tuple[int, dict]]:
    """An `answer` that forwards the body to a flowray reward server (`python -m rewards serve`) over HTTP."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}

    def answer(body: dict) -> tuple[int, dict]:
        reply = httpx.post(url + "/score", json=body, headers=headers, timeout=60)
        return reply.status_code, reply.json()

    return answer


@contextmanager
def served(scorer: str, *args: str, token: str | None = None, tmp_path=None, startup_s: float = 60.0):
    """`python -m rewards serve --scorer <scorer> --port 0 [--token-file F] *args` in a subprocess; yields its
    URL once it prints it, and stops it (only it) on the way out."""
    command = [sys.executable, "-m", "rewards", "serve", "--scorer", scorer, "--port", "0", *args]
    if token is not None:
        token_file = Path(tmp_path) / "token"
        token_file.write_text(token + "\n")
        command += ["--token-file", str(token_file)]
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
        try:
            first = lines.get(timeout=startup_s)
        except queue.Empty:
            log.seek(0)
            raise RuntimeError(f"the reward server did not start: {log.read().decode()[-2000:]}") from None
        assert first.startswith(f"serving {scorer} on http://127.0.0.1:"), first
        yield first.split(" on ", 1)[1].strip()
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
