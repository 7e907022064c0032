"""flowray entry point.

    python launch.py [--config PATH] [key=value ...] [--iterations N] [--output-dir DIR]
                     [--resume] [--address ADDR] [--dry-run]
    python launch.py eval [--config PATH] [--checkpoint DIR] [--split test|train] [--against EVAL_DIR]
                          --output-dir DIR [key=value ...]

No --config means the shapes Flow-GRPO preset. Training runs on a local single-node Ray unless
--address or RAY_ADDRESS names a cluster; under `ray job submit --working-dir . -- python launch.py ...`
it attaches to that cluster unchanged. `eval` runs in this process (no Ray needed), through the same
plan, sampler and scorers as the trainer's evaluations (cluster.evaluation), on the configured device;
`--against` pairs the result with an earlier evaluation image by image.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="flowray: online RL for flow-matching text-to-image models on Ray")
    p.add_argument("--config", help="YAML preset (default: configs/shapes_nft.yaml)")
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
    p.add_argument("--config", help="YAML preset (default: configs/shapes_nft.yaml)")
    p.add_argument("--checkpoint", help="a checkpoint folder (checkpoints/iter_*) or a run dir (its newest)")
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="test: data.test_prompts (the reported accuracy); train: the held-out check on the "
                   "training prompts (data.eval_train_images_per_tag images per tag, evaluation seeds)")
    p.add_argument("--against", metavar="EVAL",
                   help="an earlier evaluation (its folder, for its eval.json, or a <name>.json such as a run's "
                   "eval_base.json), made with the same prompts and seeds: report the paired difference")
    p.add_argument("--output-dir", required=True, help="where eval.json, eval_images.jsonl and eval_grid.png go")
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
        from cluster.preflight import preflight

        resources = json.loads(args.assume_resources) if args.assume_resources else None
        address = args.address or os.environ.get("RAY_ADDRESS")
        if address and resources is None:  # check against that cluster: its resources and every node's caches
            import ray

            ray.init(address=address, log_to_driver=False)
        report = preflight(cfg, cluster_resources=resources)
        print(report.summary())
        # What each GPU does in one iteration, beside the memory plan (cluster/cost_model.py).
        from cluster.cost_model import dry_run_lines

        print("\n".join(dry_run_lines(cfg)))
        return 0 if report.ok else 1
    import ray

    from cluster.ray_init import init_ray
    from cluster.trainer import Trainer
    from common.storage import resolve_output_dir

    init_ray(cfg, args.address)
    out = Path(resolve_output_dir(cfg.logging.output_dir))  # the Trainer resolves it the same way
    print(f"[flowray] {cfg.name}: {cfg.iterations} iterations of {cfg.algorithm.name}, "
          f"{cfg.prompts_per_iteration} prompts x {cfg.sampling.group_size} images, output {out}", flush=True)
    try:
        with Trainer(cfg, resume=args.resume) as trainer:
            final = trainer.run()
        print(f"[flowray] eval: {_brief(final.summary)} -> {out / 'eval.json'}; curves.png, before_after.png", flush=True)
    finally:
        ray.shutdown()
    return 0


def evaluate_cmd(argv: list[str]) -> int:
    from safetensors.torch import load_file

    from cluster import checkpoints
    from cluster.evaluation import compare_evaluations, comparison_table
    from cluster.run_evaluation import evaluate_in_process

    args = _eval_parser().parse_args(argv)
    cfg = _load(args)
    weights = None
    if args.checkpoint:
        try:
            file = checkpoints.evaluation_weights_file(args.checkpoint, ema=cfg.learner.ema_decay is not None)
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
        weights = load_file(str(file))
    name = "eval" if args.split == "test" else "eval_train"
    summary = evaluate_in_process(cfg, output_dir=args.output_dir, split=args.split, name=name, weights=weights).summary
    print(f"[flowray] eval: {_brief(summary)} -> {Path(args.output_dir) / (name + '.json')}")
    if args.against:
        comparison = compare_evaluations(args.against, args.output_dir, name=name)
        (Path(args.output_dir) / "comparison.json").write_text(json.dumps(comparison, indent=2))
        print(comparison_table(comparison))
        print("\n".join(comparison["verdicts"]))
    return 0


def _brief(summary: dict) -> str:
    """`overall 0.512 [0.489, 0.535], single_object ...` and each scorer's mean reward."""
    ci = summary.get("ci", {})
    parts = [f"{k} {summary[k]:.3f} [{ci[k][0]:.3f}, {ci[k][1]:.3f}]" for k in ci]
    parts += [f"{n} {v['mean']:.3f}" for n, v in summary["rewards"].items()]
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from cluster.config import ConfigError
    from cluster.evaluation import EvaluationFileError
    from common.durable import CheckpointError

    try:
        if argv and argv[0] == "eval":
            return evaluate_cmd(argv[1:])
        return train(argv)
    except (ConfigError, EvaluationFileError, CheckpointError) as err:  # their messages name the key or file
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
