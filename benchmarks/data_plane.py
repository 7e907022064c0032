"""Data-plane benchmark: bytes through the driver and object-store bytes per iteration and per evaluation.

    python benchmarks/data_plane.py [--cases tiny-16,tiny-64,...,tiny-eval] [--iterations 2] [--json OUT]
    python benchmarks/data_plane.py --table BEFORE.json AFTER.json [--readme]

Runs `Trainer.train()` on a local Ray for each training case (`Trainer.evaluate()` once for an evaluation
case) and measures, per training iteration (per evaluation):
- driver get / put: bytes of the tensors and arrays inside what the driver process receives from
  `ray.get` and hands to `ray.put` (counted by wrapping both in this process);
- object store: bytes created in Ray's object store on every node (the raylets' cumulative counter),
  by every process: rollout records, images, weights, everything.
Cases: the shipped tiny model at two group counts (16 and 64 images per iteration), and the real-width,
reduced-depth SD3.5-Medium (Flow-GRPO) and FLUX.1-dev (G2RPO, LoRA) pipelines of
scripts/build_real_width.py at two image sizes each; and one evaluation of the tiny model on the shapes
preset's powered test plan (about 1,200 images). Only public entry points are used, so the same
file measures an older checkout: run it in a `git worktree` of the base commit for the 'before' numbers,
then `--table before.json after.json` prints both side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402

SMALL = [  # one rollout actor, one learner rank, one reward actor; no evaluations or probes
    "cluster.num_rollout_actors=1", "cluster.num_learner_ranks=1", "cluster.rollout_num_cpus=0.5",
    "cluster.learner_num_cpus=0.5", "cluster.rollout_num_gpus=0", "cluster.learner_num_gpus=0",
    "cluster.layout=split", "cluster.torch_threads_per_actor=1", "cluster.sync_backend=object_store",
    "rewards.scorers=[{name: shapes_quality, num_cpus_per_actor: 0.5}]", "logging.tensorboard=false",
    "logging.checkpoint_every=0", "logging.probe_every=0", "data.eval_train_images_per_tag=0",
]  # fmt: skip
NO_EVAL_PLAN = ["data.eval_images_per_tag=null", "data.eval_max_halfwidth=null", "data.eval_max_halfwidth_overall=null"]
REAL_WIDTH = ["model.dtype=bfloat16", "learner.precision=bf16", "learner.zero_stage=1", "model.max_sequence_length=8",
              "model.lora.rank=4", "model.lora.alpha=8", "learner.micro_batch_size=4"]  # fmt: skip
# name -> (preset, real-width family or None, overrides)
CASES = {
    "tiny-16": ("configs/shapes_flowgrpo.yaml", None, ["data.images_per_iteration=16"]),
    "tiny-64": ("configs/shapes_flowgrpo.yaml", None, ["data.images_per_iteration=64"]),
    **{f"sd35-{px}px": ("configs/sd35_geneval.yaml", "sd35", [
        *REAL_WIDTH, f"model.resolution={px}", "sampling.group_size=2", "sampling.num_steps=2",
        "data.images_per_iteration=4"]) for px in (64, 128)},
    **{f"flux-{px}px": ("configs/flux_g2rpo_hps.yaml", "flux", [
        *REAL_WIDTH, "model.lora.enabled=true", "model.gradient_checkpointing=false", f"model.resolution={px}",
        "sampling.group_size=2", "sampling.num_steps=3", "algorithm.steps=[0,1]",
        "algorithm.granularities=[1,2]", "data.images_per_iteration=16"]) for px in (64, 128)},
    "tiny-eval": ("configs/shapes_flowgrpo.yaml", None, []),  # the preset's own (powered) evaluation plan
}  # fmt: skip
EVALUATIONS = {"tiny-eval"}  # cases that measure one evaluation instead of training iterations


def array_bytes(obj) -> int:
    """Bytes of the tensors and arrays inside `obj` (nested dataclasses, dicts, lists, tuples)."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(array_bytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    if isinstance(obj, dict):
        return sum(array_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(array_bytes(v) for v in obj)
    return 0


class DriverTraffic:
    """Counts the tensor and array bytes this process receives from `ray.get` and gives to `ray.put`
    while active (the trainer, the reward pools and weight sync all call them through the `ray` module)."""

    def __init__(self):
        self.got = self.put = 0

    def __enter__(self) -> DriverTraffic:
        self._get, self._put = ray.get, ray.put

        def get(*args, **kwargs):
            value = self._get(*args, **kwargs)
            self.got += array_bytes(value)
            return value

        def put(value, *args, **kwargs):
            self.put += array_bytes(value)
            return self._put(value, *args, **kwargs)

        ray.get, ray.put = get, put
        return self

    def __exit__(self, *exc) -> None:
        ray.get, ray.put = self._get, self._put


def store_created_bytes() -> int:
    """Bytes ever created in the object store, summed over the cluster's nodes."""
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    reply = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address))
    return int(reply.store_stats.cumulative_created_bytes)


def measure(cfg, iterations: int) -> dict:
    """Train `iterations` iterations of `cfg`; bytes per iteration (setup's first sync excluded)."""
    from cluster.trainer import Trainer

    with Trainer(cfg) as trainer:
        store0 = store_created_bytes()
        with DriverTraffic() as traffic:
            trainer.train()
        store = store_created_bytes() - store0
    return {"images_per_iteration": cfg.data.images_per_iteration, "resolution": cfg.model.resolution,
            "strategy": cfg.algorithm.name, "driver_get_bytes": traffic.got / iterations,
            "driver_put_bytes": traffic.put / iterations, "store_created_bytes": store / iterations}  # fmt: skip


def measure_evaluation(cfg) -> dict:
    """One evaluation of the test split (the trainer's, through the rollout and reward actors)."""
    from cluster.trainer import Trainer

    with Trainer(cfg) as trainer:
        store0 = store_created_bytes()
        with DriverTraffic() as traffic:
            evaluation = trainer.evaluate(name="bench")
        store = store_created_bytes() - store0
    return {"evaluation": True, "images": evaluation.summary["num_images"], "resolution": cfg.model.resolution,
            "driver_get_bytes": traffic.got, "driver_put_bytes": traffic.put, "store_created_bytes": store}  # fmt: skip


def config_for(name: str, iterations: int, models_dir: Path, out_dir: Path, overrides: tuple[str, ...] = ()):
    """The config of case `name` (building its real-width pipeline on first use), plus `overrides`."""
    from cluster.config import load_config

    preset, family, over = CASES[name]
    extra = []
    if family is not None:
        folder = models_dir / {"sd35": "sd35-medium-real-width", "flux": "flux1-dev-real-width"}[family]
        if not folder.is_dir():
            sys.path.insert(0, str(ROOT / "scripts"))
            from build_real_width import build

            build(models_dir, family)
        extra = [f"model.path={folder}", "data.train_prompts=assets/prompts/shapes_train.jsonl",
                 "data.test_prompts=assets/prompts/shapes_test.jsonl"]  # fmt: skip
    plan = [] if name in EVALUATIONS else NO_EVAL_PLAN
    return load_config(str(ROOT / preset), [*SMALL, *plan, *over, *extra, f"iterations={iterations}",
                                            f"logging.output_dir={out_dir / name}", *overrides])


def kib(n: float) -> str:
    return f"{n / 2**10:,.1f}"


def table(before: dict, after: dict) -> str:
    """Markdown: per case, KiB per iteration (per evaluation) through the driver (get + put) and created
    in the store."""
    lines = ["| case | images | px | driver get+put KiB: before -> after | object store KiB: before -> after |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, a in after.items():
        b = before.get(name)
        drv = lambda r: r["driver_get_bytes"] + r["driver_put_bytes"]  # noqa: E731
        label, images = ("evaluation", f"{a['images']:,} per evaluation") if a.get("evaluation") else (
            a["strategy"], f"{a['images_per_iteration']} per iteration")
        lines.append(f"| {name} ({label}) | {images} | {a['resolution']} | "
                     f"{kib(drv(b)) if b else 'n/a'} -> {kib(drv(a))} | "
                     f"{kib(b['store_created_bytes']) if b else 'n/a'} -> {kib(a['store_created_bytes'])} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "flowray-real-width",
                   help="where the real-width pipelines are built (once) and loaded from")
    p.add_argument("--json", type=Path, help="add the measurements to this file (cases already in it are kept)")
    p.add_argument("--table", nargs=2, type=Path, metavar=("BEFORE", "AFTER"), help="print two --json files side by side")
    p.add_argument("--readme", action="store_true", help="with --table: write it into docs/benchmarks.md's data-plane block")
    args = p.parse_args()
    if args.table:
        text = table(*(json.loads(f.read_text()) for f in args.table))
        print(text)
        if args.readme:
            from readme_section import replace_between

            replace_between("<!-- BEGIN DATA PLANE -->", "<!-- END DATA PLANE -->", text)
        return
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    results = json.loads(args.json.read_text()) if args.json and args.json.is_file() else {}
    with tempfile.TemporaryDirectory() as out:
        for name in args.cases.split(","):
            cfg = config_for(name, args.iterations, args.models_dir, Path(out))
            results[name] = measure_evaluation(cfg) if name in EVALUATIONS else measure(cfg, args.iterations)
            print(name, json.dumps(results[name]), flush=True)
            if args.json:  # case by case: a later case that fails keeps the earlier ones
                args.json.write_text(json.dumps(results, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
