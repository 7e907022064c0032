"""flowray entry point.

    python launch.py [--config PATH] [key=value ...] [--iterations N] [--output-dir DIR]
                     [--resume] [--address ADDR] [--dry-run]
    python launch.py eval [--config PATH] [--checkpoint DIR] [--prompts FILE] --output-dir DIR [key=value ...]

No --config means the shapes Flow-GRPO preset. Training runs on a local single-node Ray unless
--address or RAY_ADDRESS names a cluster; under `ray job submit --working-dir . -- python launch.py ...`
it attaches to that cluster unchanged. `eval` runs in this process (no Ray needed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="flowray: online RL for flow-matching text-to-image models on Ray")
    p.add_argument("--config", help="YAML preset (default: configs/shapes_flowgrpo.yaml)")
    p.add_argument("--iterations", type=int, help="override `iterations`")
    p.add_argument("--output-dir", help="override `logging.output_dir`")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--address", help="Ray address of a running cluster (default: RAY_ADDRESS, else local Ray)")
    p.add_argument("--dry-run", action="store_true", help="validate config, prompt files and resources; load nothing")
    p.add_argument("--assume-resources", metavar="JSON",
                   help='with --dry-run: check against these cluster totals, e.g. \'{"CPU": 128, "GPU": 16}\'')
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. learner.learning_rate=1e-4")
    return p


def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch.py eval", description="evaluate a policy (ODE, T_eval steps)")
    p.add_argument("--config", help="YAML preset (default: configs/shapes_flowgrpo.yaml)")
    p.add_argument("--checkpoint", help="a checkpoint folder (checkpoints/iter_*) or a run dir (its newest)")
    p.add_argument("--prompts", help="prompt file in the GenEval metadata schema (default: data.test_prompts)")
    p.add_argument("--output-dir", required=True, help="where eval.json and eval_grid.png go")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    return p


def _load(args) -> object:
    from cluster.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "iterations", None) is not None:
        overrides.append(f"iterations={args.iterations}")
    if getattr(args, "output_dir", None):
        overrides.append(f"logging.output_dir={args.output_dir}")
    return load_config(args.config, overrides)


def train(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    cfg = _load(args)
    if args.dry_run:
        import json

        from cluster.preflight import preflight

        resources = json.loads(args.assume_resources) if args.assume_resources else None
        report = preflight(cfg, cluster_resources=resources)
        print(report.summary())
        return 0 if report.ok else 1
    import ray

    from cluster.ray_init import init_ray
    from cluster.trainer import Trainer
    from common.storage import resolve_output_dir

    init_ray(cfg, args.address)
    out = Path(resolve_output_dir(cfg.logging.output_dir))  # the Trainer resolves it the same way
    print(f"[flowray] {cfg.name}: {cfg.iterations} iterations of {cfg.sampling.strategy}, "
          f"{cfg.prompts_per_iteration} prompts x {cfg.sampling.group_size} images, output {out}", flush=True)
    try:
        with Trainer(cfg, resume=args.resume) as trainer:
            final = trainer.run()
        print(f"[flowray] eval: {_brief(final.summary)} -> {out / 'eval.json'}; curves.png, before_after.png", flush=True)
    finally:
        ray.shutdown()
    return 0


def evaluate_cmd(argv: list[str]) -> int:
    import numpy as np
    from safetensors.torch import load_file

    from cluster import checkpoints
    from cluster.evaluation import evaluate
    from cluster.trainer import resolve
    from rewards.base import build_scorer
    from rewards.prompts import load_prompts
    from rollout.worker import RolloutWorker

    args = _eval_parser().parse_args(argv)
    cfg = _load(args)
    records = load_prompts(resolve(args.prompts or cfg.data.test_prompts))[: cfg.data.eval_num_prompts]
    worker = RolloutWorker(cfg.model, cfg.sampling, name="eval")
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
        if not (ckpt / checkpoints.STATE_FILE).is_file():
            ckpt = checkpoints.latest_checkpoint(ckpt) or ckpt
        weights = ckpt / "trainable.safetensors"
        if not weights.is_file():
            raise SystemExit(f"error: {args.checkpoint} holds no checkpoint (expected {weights})")
        worker.load_weights(load_file(str(weights)), version=checkpoints.read_state(ckpt)["policy_version"])
    scorers = {s.name: build_scorer(s.name, **s.scorer_options()) for s in cfg.rewards.scorers}

    def sample(prompts, per_prompt, seeds) -> np.ndarray:
        return worker.evaluate(prompts, per_prompt, seeds)

    def score(images, prompts, metadata):
        return {name: scorer(images, prompts, metadata) for name, scorer in scorers.items()}

    summary = evaluate(records, sample, score, images_per_prompt=cfg.data.eval_images_per_prompt,
                       output_dir=args.output_dir).summary
    print(f"[flowray] eval: {_brief(summary)} -> {Path(args.output_dir) / 'eval.json'}")
    return 0


def _brief(summary: dict) -> str:
    keys = [k for k in summary if k not in ("rewards", "num_prompts", "images_per_prompt")]
    parts = [f"{k} {summary[k]:.3f}" for k in keys]
    parts += [f"{n} {v['mean']:.3f}" for n, v in summary["rewards"].items()]
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from cluster.config import ConfigError

    try:
        if argv and argv[0] == "eval":
            return evaluate_cmd(argv[1:])
        return train(argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
