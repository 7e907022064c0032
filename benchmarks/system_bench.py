"""System benchmark: component throughput, weight-sync time per backend, Ray overhead, async speedup, hybrid.

    python benchmarks/system_bench.py [--config PATH] [--iterations 4] [key=value ...]

Measured side by side in one run, on whatever machine runs it (numbers are printed, never asserted):
  1. rollout images/s and learner transitions/s (in-process workers, 1 torch thread each);
  2. a single-process loop doing one iteration's work (rollout -> score -> advantage -> update ->
     weight copy) vs the Ray system in sync mode (1 rollout actor, 1 learner rank, 1 reward actor):
     overhead ratio = single-process time / Ray time per iteration (goal >= 0.9);
  3. Ray async vs sync time per iteration (goal >= 1.5x with 1 rollout + 1 learner actor);
  4. weight sync seconds per backend (object store, collective);
  5. the hybrid layout (cluster/hybrid.py: one worker samples with its live weights and trains them) vs the
     single process: goal within 5% (hybrid / single process <= 1.05).
The first iteration of every mode is warm-up and excluded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cluster.config import load_config  # noqa: E402


def _cfg(args, **extra):
    overrides = [
        # One thread per worker everywhere (a preset's learner_torch_threads would favour the modes that use it).
        "cluster.num_rollout_actors=1", "cluster.num_learner_ranks=1", "cluster.torch_threads_per_actor=1",
        "cluster.learner_torch_threads=null",
        "logging.tensorboard=false", f"iterations={args.iterations}", *args.overrides,
    ]  # fmt: skip
    return load_config(args.config, overrides + [f"{k}={v}" for k, v in extra.items()])


def single_process(args) -> dict:
    """The same iteration in one process, no Ray: the baseline for the overhead ratio."""
    from cluster.config import resolve
    from cluster.stages import iteration_advantages, score_in_process
    from learner.engine import free_port
    from learner.worker import LearnerWorker
    from models.seeding import derive_seed
    from rewards.base import build_scorers
    from rewards.prompts import load_prompts
    from rollout.worker import GroupRequest, RolloutWorker

    torch.set_num_threads(1)
    cfg = _cfg(args)
    rollout = RolloutWorker(cfg.model, cfg.sampling, algorithm=cfg.algorithm, torch_threads=1)
    learner = LearnerWorker(cfg.model, cfg.sampling, cfg.learner, algorithm=cfg.algorithm, seed=cfg.seed,
                            torch_threads=1, iterations=cfg.iterations)
    learner.setup("127.0.0.1", free_port())
    rollout.load_buckets(learner.export_sampling_buckets()[0], 0)  # the sync the Ray system runs
    scorers = build_scorers(cfg.rewards.scorers)
    prompts = load_prompts(resolve(cfg.data.train_prompts))
    times, roll_s, upd_s, images, transitions = [], [], [], 0, 0
    for it in range(args.iterations):
        t0 = time.perf_counter()
        reqs = [GroupRequest(g, prompts[g % len(prompts)]["prompt"], prompts[g % len(prompts)],
                             derive_seed(cfg.seed, "group", it, g), it) for g in range(cfg.prompts_per_iteration)]
        results = rollout.rollout(reqs)
        t1 = time.perf_counter()
        scored = score_in_process(results, scorers)
        groups, _ = iteration_advantages(scored, cfg)
        t2 = time.perf_counter()
        metrics = learner.train(groups, it)
        t3 = time.perf_counter()
        rollout.load_buckets(learner.export_sampling_buckets()[0], learner.get_version())
        if it > 0:
            times.append(time.perf_counter() - t0)
            roll_s.append(t1 - t0)
            upd_s.append(t3 - t2)
            images += sum(len(r.images) for r in results)
            transitions += metrics["learner/transitions"]
    return {
        "seconds_per_iteration": float(np.mean(times)),
        "rollout_images_per_s": images / sum(roll_s),
        "learner_transitions_per_s": transitions / sum(upd_s),
    }


def ray_system(args, *, async_mode: bool, backend: str = "object_store", layout: str = "split") -> dict:
    import ray

    from cluster.ray_init import cpu_demand, start_local_ray
    from cluster.trainer import Trainer

    out = tempfile.mkdtemp(prefix="flowray-bench-")
    cfg = _cfg(args, **{"cluster.async_mode": str(async_mode).lower(), "cluster.sync_backend": backend,
                        "cluster.layout": layout, "logging.output_dir": out, "logging.checkpoint_every": 10**6})
    start_local_ray(cpu_demand(cfg), log_to_driver=False)
    try:
        with Trainer(cfg) as trainer:
            start = time.perf_counter()
            trainer.train()
            total = time.perf_counter() - start
            syncs = [trainer.sync()["time/sync"] for _ in range(5)]
    finally:
        ray.shutdown()
    lines = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    steps = [m["time/step"] for m in lines[1:]]
    return {"seconds_per_iteration": float(np.mean(steps)), "total_seconds": total,
            "sync_seconds": float(np.median(syncs)),
            "staleness_max": max(m["learner/staleness_max"] for m in lines)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config")
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    print(f"[bench] {os.cpu_count()} CPUs, torch {torch.__version__}, {args.iterations} iterations per mode", flush=True)
    single = single_process(args)
    print(f"[bench] single-process: {single}", flush=True)
    sync = ray_system(args, async_mode=False)
    print(f"[bench] ray sync: {sync}", flush=True)
    asyn = ray_system(args, async_mode=True)
    print(f"[bench] ray async: {asyn}", flush=True)
    coll = ray_system(args, async_mode=False, backend="collective")
    print(f"[bench] ray sync, collective weight sync: {coll}", flush=True)
    hybrid = ray_system(args, async_mode=False, layout="hybrid")
    print(f"[bench] ray hybrid: {hybrid}", flush=True)
    rows = [
        ("rollout images/s (in-process)", f"{single['rollout_images_per_s']:.1f}"),
        ("learner transitions/s (in-process)", f"{single['learner_transitions_per_s']:.1f}"),
        ("s/iteration single process", f"{single['seconds_per_iteration']:.2f}"),
        ("s/iteration Ray sync", f"{sync['seconds_per_iteration']:.2f}"),
        ("s/iteration Ray async", f"{asyn['seconds_per_iteration']:.2f}"),
        ("s/iteration Ray hybrid", f"{hybrid['seconds_per_iteration']:.2f}"),
        ("overhead ratio (single / Ray sync; goal >= 0.9)", f"{single['seconds_per_iteration'] / sync['seconds_per_iteration']:.2f}"),
        ("async speedup (sync / async; goal >= 1.5)", f"{sync['seconds_per_iteration'] / asyn['seconds_per_iteration']:.2f}"),
        ("hybrid / single process (goal <= 1.05)", f"{hybrid['seconds_per_iteration'] / single['seconds_per_iteration']:.2f}"),
        ("weight sync s, object store", f"{sync['sync_seconds']:.3f}"),
        ("weight sync s, collective (gloo/NCCL)", f"{coll['sync_seconds']:.3f}"),
        ("weight sync s, hybrid (in place: digest check only)", f"{hybrid['sync_seconds']:.3f}"),
        ("async staleness (max)", f"{asyn['staleness_max']:.0f}"),
    ]
    width = max(len(r[0]) for r in rows)
    print("\n| metric | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")


if __name__ == "__main__":
    main()
