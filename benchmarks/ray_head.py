"""A private Ray head for a benchmark: `ray start --head` on 127.0.0.1 with its own ports and temp dir, so
it runs beside other Ray clusters of the host, and `stop` ends only its own processes (`ray stop` would
end every Ray process of the host). The benchmark's drivers attach with `launch.py --address`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

_GIVEN: set[int] = set()


def free_port() -> int:
    """A free loopback port not handed out before by this process (the OS may offer one twice)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def ray_env() -> dict[str, str]:
    """The environment of the head and of every driver: token auth off for all alike (a mismatch fails
    in confusing ways), this interpreter's venv first on PATH, nothing downloaded."""
    bin_dir = Path(sys.executable).parent
    return {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
            "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
            "PYTHONUNBUFFERED": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


class RayHead:
    """`with RayHead(num_cpus=4) as head:` a head with the dashboard (Ray's state API reads through it)
    and a Prometheus endpoint at `head.metrics_url`."""

    def __init__(self, num_cpus: int, name: str = "bench"):
        self.num_cpus = num_cpus
        self.temp = Path("/tmp") / f"flowray-{name}-{os.getpid()}"  # Ray's socket paths must stay short
        self.gcs, self.dashboard_port, self.metrics_port = free_port(), free_port(), free_port()
        self.address = f"127.0.0.1:{self.gcs}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"

    def __enter__(self) -> RayHead:
        cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={self.gcs}",
               f"--num-cpus={self.num_cpus}", f"--temp-dir={self.temp}", "--node-ip-address=127.0.0.1",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
               f"--metrics-export-port={self.metrics_port}", f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-agent-grpc-port={free_port()}", f"--ray-client-server-port={free_port()}",
               "--disable-usage-stats"]
        try:  # inside the try: a start that times out half-way still leaves daemons to stop
            subprocess.run(cmd, env=ray_env(), check=True, capture_output=True, timeout=300)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def processes(self) -> list[psutil.Process]:
        """The head's daemons: every process whose command line names its temp dir."""
        out = []
        for p in psutil.process_iter(["cmdline"]):
            try:
                if str(self.temp) in " ".join(p.info["cmdline"] or []):
                    out.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return out

    def stop(self) -> None:
        """End the head's daemons and their descendants (workers, agents), and nothing else."""
        procs = []
        for p in self.processes():
            try:
                procs += [p, *p.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=20)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        shutil.rmtree(self.temp, ignore_errors=True)

    def alive_actors(self) -> list[dict]:
        """[{name, pid, num_restarts, job_id}] of the named ALIVE actors (Ray's state API)."""
        from ray.util.state import list_actors

        for attempt in range(5):
            try:
                found = list_actors(address=self.address, filters=[("state", "=", "ALIVE")], detail=True,
                                    raise_on_missing_output=False, timeout=30)
                return [{"name": a.name, "pid": a.pid, "num_restarts": int(a.num_restarts or 0), "job_id": a.job_id,
                         "repr": a.repr_name} for a in found if a.name]
            except Exception:  # noqa: BLE001 - the dashboard is busy or restarting its state API: ask again
                time.sleep(2 * (attempt + 1))
        return []
