"""Weight sync: seconds and peak host memory per sync, the bucketed sync against the path it replaced and
against a plain memcpy of the same bytes.

    python benchmarks/weight_sync.py [--cases tiny,sd35,flux] [--repeats 3] [--models-dir DIR]

Each case runs in a fresh process holding a learner's policy and a rollout actor's policy (the preset's
model and training mode: the shipped tiny model with the shapes Flow-GRPO preset's LoRA; the real-width,
reduced-depth SD3.5-Medium with sd35_geneval's LoRA and FLUX.1-dev with flux_g2rpo_hps's full
fine-tuning, both bf16, from scripts/build_real_width.py). The learner's DeepSpeed engine is not built:
sync reads the module's parameters, which the engine shares. Paths, one sync each, timed end to end on
the learner and the receiver together (same process, local Ray):

- `before`: what a sync did up to this change, with the methods that still exist: learner sha256 digest
  of its exported weights, export as numpy (bf16 widened to fp32) into the object store, the actor copies
  the arrays, loads them and returns a sha256 digest of what it holds.
- `store`: LearnerWorker.export_sampling_buckets (bf16 buckets put one at a time, checksummed) and
  RolloutWorker.load_buckets (read in place from the object store, verified, copied into the parameters).
- `collective`: LearnerWorker.broadcast_weights to RolloutWorker.receive_weights over a gloo group (the
  receiver in a thread), no object store.
- `memcpy`: one copy of the synced bytes (in their own dtype) into a preallocated buffer.

Seconds: the median over `--repeats` syncs after a warm-up sync. Peak memory: the largest rise of the
process's resident set during any one sync (VmHWM after resetting it with /proc/self/clear_refs, minus
VmRSS before), object-store pages this process writes included.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = {  # name -> (preset, real-width family or None for the preset's own tiny model)
    "tiny": ("configs/shapes_flowgrpo.yaml", None),
    "sd35": ("configs/sd35_geneval.yaml", "sd35"),
    "flux": ("configs/flux_g2rpo_hps.yaml", "flux"),
}
FOLDERS = {"sd35": "sd35-medium-real-width", "flux": "flux1-dev-real-width"}


def _proc_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _measured(fn) -> tuple[float, int]:
    """(seconds, peak RSS rise in bytes) of one call."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before = _proc_kib("VmRSS")
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start, (_proc_kib("VmHWM") - before) * 1024


def _workers(case: str, models_dir: Path):
    from cluster.config import load_config
    from learner.worker import LearnerWorker
    from models.policy import PRECISION_DTYPES, Policy
    from rollout.worker import RolloutWorker

    preset, family = CASES[case]
    over = []
    if family is not None:
        folder = models_dir / FOLDERS[family]
        if not folder.is_dir():
            sys.path.insert(0, str(ROOT / "scripts"))
            from build_real_width import build

            build(models_dir, family)
        over = [f"model.path={folder}"]
    cfg = load_config(str(ROOT / preset), over)
    learner = LearnerWorker(cfg.model, cfg.sampling, cfg.learner, algorithm=cfg.algorithm, iterations=cfg.iterations)
    learner.policy = Policy.from_config(cfg.model, trainable_dtype=PRECISION_DTYPES[cfg.learner.precision])
    rollout = RolloutWorker(cfg.model, cfg.sampling, algorithm=cfg.algorithm, device="cpu", precision=cfg.learner.precision)
    return learner, rollout, cfg


def _collective(learner, rollout):
    from learner.engine import free_port

    port = free_port()
    t = threading.Thread(target=rollout.join_sync_group, args=("127.0.0.1", port, 1, 2))
    t.start()
    learner.join_sync_group("127.0.0.1", port, 2)
    t.join()

    def sync(version: int) -> None:
        ack = {}
        t = threading.Thread(target=lambda: ack.update(rollout.receive_weights(version)))
        t.start()
        sent = learner.broadcast_weights()
        t.join()
        assert ack["digest"] == sent["digest"] and ack["version"] == version

    return sync


def child(case: str, models_dir: Path, repeats: int) -> dict:
    import ray
    import torch

    from common.weight_buckets import weights_digest

    learner, rollout, cfg = _workers(case, models_dir)
    live = learner.policy.trainable_tensors()
    nbytes = sum(t.numel() * t.element_size() for t in live.values())
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)

    def before(version: int) -> None:
        digest = learner.weights_digest()
        ref = ray.put(learner.export_sampling_weights())
        ack = rollout.load_weights(ray.get(ref), version)
        assert ack["digest"] == digest and ack["version"] == version

    def store(version: int) -> None:
        refs, digest = learner.export_sampling_buckets()
        ack = rollout.load_buckets(refs, version)
        assert ack["digest"] == digest and ack["version"] == version

    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.zeros(nbytes, dtype=torch.uint8)
    paths = {"memcpy": lambda v: dst.copy_(src), "collective": _collective(learner, rollout), "store": store,
             "before": before}
    out = {"case": case, "mode": "LoRA" if cfg.model.lora.enabled else "full", "dtype": str(next(iter(live.values())).dtype),
           "bytes": nbytes, "tensors": len(live)}
    version = 0
    for name, sync in paths.items():
        seconds, peaks = [], []
        for i in range(repeats + 1):
            version += 1
            s, peak = _measured(lambda v=version, f=sync: f(v))
            peaks.append(peak)
            if i:  # the first is the warm-up
                seconds.append(s)
        out[name] = {"seconds": statistics.median(seconds), "peak_rss_bytes": max(peaks)}
        if name != "memcpy":  # every path leaves the actor holding exactly the learner's weights
            assert weights_digest(rollout.weights()) == learner.weights_digest(), name
    ray.shutdown()
    return out


def table(rows: list[dict]) -> str:
    mb = 2**20
    lines = [
        "| case | synced | s/sync: memcpy / before / store / collective | store, collective vs memcpy "
        "| peak RSS rise per sync, MB: before / store / collective |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["memcpy"]["seconds"]
        lines.append(
            f"| {r['case']} ({r['mode']}) | {r['bytes'] / mb:,.1f} MB {r['dtype'].removeprefix('torch.')} in "
            f"{r['tensors']} tensors | {m:.3f} / {r['before']['seconds']:.3f} / {r['store']['seconds']:.3f} / "
            f"{r['collective']['seconds']:.3f} | {r['store']['seconds'] / m:.1f}x, {r['collective']['seconds'] / m:.1f}x | "
            f"{r['before']['peak_rss_bytes'] / mb:,.0f} / {r['store']['peak_rss_bytes'] / mb:,.0f} / "
            f"{r['collective']['peak_rss_bytes'] / mb:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--repeats", type=int, default=3, help="timed syncs per path, after one warm-up")
    p.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "flowray-real-width",
                   help="where the real-width folders are (built there if missing)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.models_dir, args.repeats)))
        return
    rows = []
    for case in args.cases.split(","):
        if case not in CASES:
            raise SystemExit(f"--cases: unknown case {case!r}; expected some of {', '.join(CASES)}")
        run = subprocess.run([sys.executable, __file__, "--child", case, "--repeats", str(args.repeats),
                              "--models-dir", str(args.models_dir)], capture_output=True, text=True, check=False)
        if run.returncode:
            raise SystemExit(f"case {case} failed:\n{run.stderr[-4000:]}")
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
