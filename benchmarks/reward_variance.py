"""Where does a group's reward variance come from: the initial noise, or the SDE steps?

    python benchmarks/reward_variance.py [--config configs/shapes_flowgrpo.yaml] [--prompts 16]
                                         [--inits 4] [key=value ...]

For each of `--prompts` training prompts (drawn with a fixed seed) the configured algorithm's strategy samples
`--inits` groups, each from ONE shared initial noise (`sampling.same_latent=true`), scored with the
config's reward (its scorers, combined with their weights, as the trainer does). The mean within-group variance over the mean total variance is the share of the
reward variance that the policy's own noise (the trained SDE steps) explains; the rest comes from the
initial noise, which no log-prob term is credited with. A share near 1 means sharing the initial noise
within a group (DanceGRPO's `same_latent`) cannot sharpen the advantages much.

Runs in-process on the base model (no Ray); about 40 s for the defaults on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cluster.config import REPO_ROOT, load_config, resolve  # noqa: E402
from cluster.stages import score_in_process  # noqa: E402
from models.seeding import derive_seed  # noqa: E402
from rewards.base import build_scorers  # noqa: E402
from rewards.combine import combine  # noqa: E402
from rewards.prompts import load_prompts  # noqa: E402
from rollout.worker import GroupRequest, RolloutWorker  # noqa: E402


def variance_share(rewards: np.ndarray) -> tuple[float, float]:
    """rewards [prompts, inits, G] -> (mean within-init variance, mean total variance per prompt)."""
    within = rewards.var(axis=2).mean()
    total = rewards.reshape(rewards.shape[0], -1).var(axis=1).mean()
    return float(within), float(total)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(REPO_ROOT / "configs" / "shapes_flowgrpo.yaml"))
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--inits", type=int, default=4)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    sampling = cfg.sampling.model_copy(update={"same_latent": True})
    worker = RolloutWorker(cfg.model.model_copy(update={"path": resolve(cfg.model.path)}), sampling,
                           algorithm=cfg.algorithm)
    records = load_prompts(resolve(cfg.data.train_prompts))
    scorers = build_scorers(cfg.rewards.scorers)

    def reward(result) -> np.ndarray:
        (scored,) = score_in_process([result], scorers)
        return combine({k: v.reward for k, v in scored.scores.items()}, cfg.rewards.weights()).reward

    picks = np.random.default_rng(cfg.seed).choice(len(records), min(args.prompts, len(records)), replace=False)
    start, rewards = time.perf_counter(), []
    for n, index in enumerate(picks, 1):
        record, per_init = records[index], []
        for k in range(args.inits):
            seed = derive_seed(cfg.seed, "reward_variance", int(index), k)
            per_init.append(reward(worker.rollout([GroupRequest(0, record["prompt"], record, seed, iteration=0)])[0]))
        rewards.append(np.stack(per_init))
        print(f"[{n}/{len(picks)}] {record['prompt']!r}: mean reward {rewards[-1].mean():.3f}", flush=True)
    within, total = variance_share(np.stack(rewards))
    result = {"algorithm": cfg.algorithm.name, "noise_level": sampling.noise_level, "within": within,
              "total": total, "sde_share": within / total if total > 0 else float("nan"),
              "seconds": time.perf_counter() - start}
    print(f"{cfg.algorithm.name} (noise level {sampling.noise_level}): mean within-group variance {within:.4f}, "
          f"mean total variance {total:.4f}; share from the SDE steps {result['sde_share']:.2f} "
          f"({args.prompts} prompts x {args.inits} initial noises x {sampling.group_size}; {result['seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
