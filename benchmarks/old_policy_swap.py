"""The forward-process family's old-policy velocity: host round trips against the in-place device swap.

    python benchmarks/old_policy_swap.py [--config configs/shapes_nft.yaml] [--iterations 5] [key=value ...]

DiffusionNFT and AWM evaluate the sampling ("old") policy's velocity on every micro-batch. Before issue 32
the learner exported the trained weights to the host, loaded the old ones, ran the forward and loaded the
trained ones back (each load exporting once more to check the names); now both copies stay on the rank's
device and are copied in place (learner/forward_process.py `swapped_in`). This benchmark trains the same
sampled groups for the same iterations with each, in one run, in process (one thread), and prints the
update seconds per iteration side by side and whether both end with the same weights (they must).
The first iteration of each is warm-up and excluded.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cluster.config import DEFAULT_PRESET, load_config, resolve  # noqa: E402
from learner.forward_process import ForwardProcessPlan  # noqa: E402


class HostRoundTripPlan(ForwardProcessPlan):
    """The code this replaced: the old policy's velocity through host copies and two loads."""

    def _old_velocity(self, x_t, sigma, cond) -> torch.Tensor:
        policy = self.worker.policy
        trained = policy.export_trainable()
        policy.load_trainable({k: torch.from_numpy(v.detach().cpu().numpy()) for k, v in self.old.items()})
        try:
            return policy.velocity(x_t, sigma, cond)
        finally:
            policy.load_trainable(trained)


def main() -> None:
    from cluster.stages import iteration_advantages, score_in_process
    from common.weight_buckets import weights_digest
    from learner.engine import free_port
    from learner.worker import LearnerWorker
    from models.seeding import derive_seed
    from rewards.base import build_scorers
    from rewards.prompts import load_prompts
    from rollout.worker import GroupRequest, RolloutWorker

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(DEFAULT_PRESET))
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config, [f"iterations={args.iterations}", *args.overrides])
    if "old policy" not in cfg.algorithm.learner_frozen_forwards(cfg.learner):
        raise SystemExit(f"{args.config}: algorithm {cfg.algorithm.name!r} forwards no old policy on the learner")
    rollout = RolloutWorker(cfg.model, cfg.sampling, algorithm=cfg.algorithm, torch_threads=1)
    prompts = load_prompts(resolve(cfg.data.train_prompts))
    reqs = [GroupRequest(g, prompts[g]["prompt"], prompts[g], derive_seed(cfg.seed, "group", 0, g), 0)
            for g in range(cfg.prompts_per_iteration)]
    groups, _ = iteration_advantages(score_in_process(rollout.rollout(reqs), build_scorers(cfg.rewards.scorers)), cfg)
    print(f"[bench] {cfg.name}: {len(groups)} groups, {args.iterations} iterations each, 1 thread", flush=True)
    results = {}
    for label, plan in (("host round trips (before)", HostRoundTripPlan), ("in-place device swap", None)):
        learner = LearnerWorker(cfg.model, cfg.sampling, cfg.learner, algorithm=cfg.algorithm, seed=cfg.seed,
                                torch_threads=1, iterations=cfg.iterations)
        if plan is not None:
            learner.plan = plan(learner)
        learner.setup("127.0.0.1", free_port())
        seconds = []
        for it in range(args.iterations):
            start = time.perf_counter()
            learner.train(groups, it)
            seconds.append(time.perf_counter() - start)
        results[label] = (seconds[1:], weights_digest(learner.policy.export_trainable()))
        print(f"[bench] {label}: {[f'{s:.2f}' for s in seconds]}", flush=True)
    print("\n| old-policy velocity | update s/iteration (median, min-max) |\n|---|---|")
    for label, (seconds, _) in results.items():
        print(f"| {label} | {np.median(seconds):.2f} ({min(seconds):.2f}-{max(seconds):.2f}) |")
    (before, d0), (after, d1) = results.values()
    print(f"\nspeedup (before / after, medians): {np.median(before) / np.median(after):.2f}x; "
          f"same trained weights: {d0 == d1}")


if __name__ == "__main__":
    main()
