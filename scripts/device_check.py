"""One full iteration of a preset (rollout, reward, update, sync, checkpoint) with its model swapped for
another pipeline folder, then the numbers a first GPU run must be judged by: each actor's peak
memory and the first minibatch's ratio statistics (on-policy ratios should be ~1; flow_grpo's FAQ).

    python scripts/device_check.py --config configs/flux_g2rpo_hps.yaml --model-path DIR \
        --output-dir DIR [--gpu] [key=value ...]

Rewards are replaced by `shapes_quality` (it needs no downloaded weights), resolution and group size
are reduced, and with --gpu every actor shares one GPU (weights synced through the object store).
scripts/device_check.sh runs it for the SD3.5 and FLUX presets on the real-width reduced-depth folders.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def check_overrides(model_path: str, output_dir: str, gpu: bool) -> list[str]:
    """The overrides that turn a preset into one small iteration on one machine (one GPU with --gpu)."""
    # One GPU for both sides: the weights go through the object store, since NCCL (the presets' collective
    # sync) refuses two ranks on one GPU and preflight refuses that configuration.
    share = (["cluster.rollout_num_gpus=0.4", "cluster.learner_num_gpus=0.4", "cluster.sync_backend=object_store"]
             if gpu else ["cluster.rollout_num_gpus=0", "cluster.learner_num_gpus=0"])
    return [
        f"model.path={model_path}", "iterations=1", "data.images_per_iteration=8", "sampling.group_size=4",
        "data.train_prompts=assets/prompts/shapes_train.jsonl", "data.test_prompts=assets/prompts/shapes_test.jsonl",
        "rewards.scorers=[{name: shapes_quality}]", "cluster.num_learner_ranks=1", "cluster.num_rollout_actors=1",
        "cluster.learner_num_cpus=1", "cluster.rollout_num_cpus=1", "cluster.async_mode=false",
        "logging.eval_base=false", "logging.tensorboard=false", f"logging.output_dir={output_dir}", *share,
    ]


def ratio_metrics(metrics: dict) -> dict:
    """The update's ratio health metrics (ratio mean/std, clip fraction), whatever their prefix."""
    return {k: v for k, v in metrics.items() if "ratio" in k or "clipfrac" in k}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--model-path", required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--gpu", action="store_true", help="put every actor on the one GPU")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)

    import ray

    from cluster.config import load_config
    from cluster.ray_init import init_ray
    from cluster.trainer import Trainer

    cfg = load_config(args.config, check_overrides(args.model_path, args.output_dir, args.gpu) + args.overrides)
    init_ray(cfg)
    start = time.perf_counter()
    try:
        with Trainer(cfg) as trainer:
            metrics = trainer.train()
            actors = {f"learner-{r}": a for r, a in enumerate(trainer.learners)}
            actors |= {f"rollout-{i}": a for i, a in enumerate(trainer.rollouts)}
            memory = {name: ray.get(a.peak_memory.remote()) for name, a in actors.items()}
            out = Path(trainer.cfg.logging.output_dir)  # resolved on the driver (common/storage.py)
    finally:
        ray.shutdown()
    report = {"config": args.config, "model": args.model_path, "seconds": time.perf_counter() - start,
              "peak_memory_gb": memory, "ratio": ratio_metrics(metrics)}
    print(f"[device_check] {json.dumps(report, indent=1)}", flush=True)
    (out / "device_check.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
