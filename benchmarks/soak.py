"""Soak benchmark: reward actors under sustained queue pressure.

    python benchmarks/soak.py [--minutes 3] [--actors 2] [--in-flight 32] [--batch 16]

Keeps `--in-flight` requests queued on a pool of shapes_geneval reward actors for `--minutes`,
gathering the oldest and submitting a new one each time (so the queue never drains), and samples every
actor's resident memory (RSS) each few seconds. Prints the RSS trajectory per actor, the request and
image counts, and checks that every submitted request came back exactly once with one score per image
(no lost or duplicated results). Numbers are printed, never asserted by a test.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import ray  # noqa: E402

from cluster.ray_init import start_local_ray  # noqa: E402
from rewards.config import RewardsConfig, ScorerConfig  # noqa: E402
from rewards.pool import RewardPools  # noqa: E402
from rewards.shapes.world import all_records, render, sample_scene  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--in-flight", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()

    rng = np.random.default_rng(0)
    records = [r for recs in all_records().values() for r in recs]
    picks = [records[i] for i in rng.integers(len(records), size=64)]
    images = np.stack([render(sample_scene(r, rng)) for r in picks])
    prompts = [r["prompt"] for r in picks]

    cfg = RewardsConfig(scorers=[ScorerConfig(name="shapes_geneval", actors=args.actors,
                                              batch_size_per_request=args.batch)])
    start_local_ray(sum(s.actors * s.num_cpus_per_actor for s in cfg.scorers), log_to_driver=False)
    pools = RewardPools(cfg)
    pool = pools.pools["shapes_geneval"]
    pids = {i: ray.get(a.ping.remote()) for i, a in enumerate(pool.actors)}
    rss: dict[int, list[tuple[float, float]]] = collections.defaultdict(list)
    queue: collections.deque = collections.deque()
    submitted = returned = images_scored = wrong = 0
    start = last_sample = time.perf_counter()
    deadline = start + 60 * args.minutes
    try:
        while time.perf_counter() < deadline or queue:
            while time.perf_counter() < deadline and len(queue) < args.in_flight:
                idx = rng.integers(len(images), size=args.batch)
                queue.append((pools.submit(images[idx], [prompts[i] for i in idx], [picks[i] for i in idx]), idx))
                submitted += 1
            handle, idx = queue.popleft()
            result = pools.gather(handle).results["shapes_geneval"]
            returned += 1
            images_scored += len(result)
            expected = np.ones(len(idx))  # clean renders of their own prompt: GenEval strict = 1
            wrong += int(len(result) != len(idx) or not np.array_equal(result.diagnostics["strict"], expected))
            now = time.perf_counter()
            if now - last_sample > 5:
                for i, pid in pids.items():
                    rss[i].append((now - start, psutil.Process(pid).memory_info().rss / 2**20))
                last_sample = now
    finally:
        pools.shutdown()
        ray.shutdown()
    elapsed = time.perf_counter() - start
    print(f"[soak] {elapsed:.0f} s, {args.actors} actors, {args.in_flight} requests in flight x {args.batch} images")
    print(f"[soak] requests submitted {submitted}, returned {returned}, lost {submitted - returned}, "
          f"wrong or duplicated results {wrong}; images scored {images_scored} ({images_scored / elapsed:.0f}/s)")
    for i, samples in rss.items():
        first, last = samples[0][1], samples[-1][1]
        peak = max(v for _, v in samples)
        print(f"[soak] reward-shapes_geneval-{i} RSS MiB: first {first:.1f}, last {last:.1f}, peak {peak:.1f}, "
              f"drift {last - first:+.1f} over {samples[-1][0] - samples[0][0]:.0f} s ({len(samples)} samples)")


if __name__ == "__main__":
    main()
