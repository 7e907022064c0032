"""Colocation benchmark: peak resident memory of a shared bundle with and without offloading.

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/colocation.py [--cases tiny-16,sd35-64px] [--iterations 2]

One learner rank and one rollout actor in one placement-group bundle (`cluster.colocate=true`), on CPU,
trained for a few iterations twice: with `cluster.colocate_offload` off, then on (common/offload.py: the
idle side's tensors go to a spill file, the CPU stand-in for pinned host memory). A thread samples the
resident set (VmRSS) of both actor processes every 20 ms; the bundle's peak is the largest sum of the two
at one instant. Cases are benchmarks/data_plane.py's: the shipped tiny model and the real-width,
reduced-depth SD3.5-Medium of scripts/build_real_width.py (built once under --models-dir). Prints one row
per case, both modes side by side, and the seconds per iteration each took.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ray  # noqa: E402
from data_plane import CASES, config_for  # noqa: E402  (also puts the repo root on sys.path)

GIB = 2**30


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


class PeakRss:
    """Samples the resident sets of `pids` in a thread: the peak of each and of their sum."""

    def __init__(self, pids: list[int], every_s: float = 0.02):
        self.pids, self.every_s = pids, every_s
        self.each, self.total = [0] * len(pids), 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = [rss_bytes(p) for p in self.pids]
            self.each = [max(a, b) for a, b in zip(self.each, now, strict=True)]
            self.total = max(self.total, sum(now))
            time.sleep(self.every_s)

    def __enter__(self) -> PeakRss:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measure(cfg) -> dict:
    """Train `cfg` and return the bundle's peak RSS (after setup: loading is the same in both modes)."""
    from cluster.trainer import Trainer

    with Trainer(cfg) as trainer:
        pids = ray.get([trainer.learners[0].pid.remote(), trainer.rollouts[0].pid.remote()])
        start = time.perf_counter()
        with PeakRss(pids) as peak:
            metrics = trainer.train()
        seconds = (time.perf_counter() - start) / cfg.iterations
    return {"bundle_peak_gib": peak.total / GIB, "learner_peak_gib": peak.each[0] / GIB,
            "rollout_peak_gib": peak.each[1] / GIB, "seconds_per_iteration": seconds,
            "offload_seconds": metrics.get("time/offload", 0.0)}  # fmt: skip


def table(results: dict) -> str:
    lines = ["| case | bundle peak RSS GiB: colocated -> + offload | learner rank | rollout actor | s/iteration |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, r in results.items():
        off, on = r["off"], r["on"]
        lines.append(f"| {name} | {off['bundle_peak_gib']:.2f} -> {on['bundle_peak_gib']:.2f} | "
                     f"{off['learner_peak_gib']:.2f} -> {on['learner_peak_gib']:.2f} | "
                     f"{off['rollout_peak_gib']:.2f} -> {on['rollout_peak_gib']:.2f} | "
                     f"{off['seconds_per_iteration']:.1f} -> {on['seconds_per_iteration']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="tiny-16,sd35-64px", help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "flowray-real-width",
                   help="where the real-width pipelines are built (once) and loaded from")
    p.add_argument("--json", type=Path, help="write the measurements here")
    args = p.parse_args()
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    results = {}
    with tempfile.TemporaryDirectory() as out:
        for name in args.cases.split(","):
            results[name] = {}
            for mode, on in (("off", "false"), ("on", "true")):
                cfg = config_for(name, args.iterations, args.models_dir, Path(out) / mode,
                                 ("cluster.colocate=true", f"cluster.colocate_offload={on}", "cluster.async_mode=false"))
                results[name][mode] = measure(cfg)
                print(name, mode, json.dumps(results[name][mode]), flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=2))
    ray.shutdown()
    print(table(results))


if __name__ == "__main__":
    main()
