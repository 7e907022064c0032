"""The SD3.5 and FLUX presets at published widths (reduced depth: scripts/build_real_width.py) on two
learner ranks placed on two Ray nodes, with ZeRO-2 and ZeRO-3, in bf16: one iteration with a
checkpoint, then a resumed second iteration, each timed (issue 13's multi-node proof on CPU).

    python scripts/multinode_real_width.py OUT_DIR [--family sd35 flux] [--zero 2 3] [key=value ...]

The two nodes are a `ray.cluster_utils.Cluster` on this machine (a head and a worker node, each with
its own CPUs); the learner ranks' bundles are placed STRICT_SPREAD, so they land on different nodes,
and the script checks that they did. Each run is the preset through scripts/device_check.py's
overrides (shapes prompts, the shapes_quality reward, one rollout actor) at 32 px and 8 T5 tokens.
Writes OUT_DIR/multinode_real_width.json: per case the wall times, the learners' nodes, the metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]  # repo, scripts/

from build_real_width import FAMILIES, build  # noqa: E402
from device_check import check_overrides  # noqa: E402

PRESETS = {"sd35": "configs/sd35_pickscore.yaml", "flux": "configs/flux_g2rpo_hps.yaml"}
SMALL = {  # what 2 cores can run; widths, heads and dtypes stay the published ones
    "sd35": ["model.resolution=32", "model.max_sequence_length=8", "sampling.num_steps=2", "sampling.group_size=2",
             "data.images_per_iteration=4", "model.lora.rank=4", "model.lora.alpha=8", "learner.micro_batch_size=4"],
    "flux": ["model.resolution=32", "model.max_sequence_length=8", "sampling.num_steps=3", "sampling.group_size=2",
             "data.images_per_iteration=4", "algorithm.steps=[0,1]", "algorithm.granularities=[1,2]",
             "learner.micro_batch_size=4", "model.gradient_checkpointing=false"],
}


def multinode_overrides(family: str, model_path: str, output_dir: str, zero_stage: int) -> list[str]:
    """One small iteration of `family`'s preset with two learner ranks on two nodes (STRICT_SPREAD)."""
    return [*check_overrides(model_path, output_dir, gpu=False), *SMALL[family], f"learner.zero_stage={zero_stage}",
            "cluster.num_learner_ranks=2", "cluster.colocate=true", "cluster.placement_strategy=STRICT_SPREAD",
            "cluster.learner_num_cpus=0.5", "cluster.rollout_num_cpus=0.5", "cluster.torch_threads_per_actor=1",
            "logging.checkpoint_every=1", "sampling.eval_num_steps=2", "data.eval_num_prompts=1"]


def learner_nodes(trainer) -> list[str]:
    """The node each learner rank's bundle was placed on."""
    from ray.util import placement_group_table

    table = placement_group_table(trainer.placement.group)["bundles_to_node_id"]
    return [table[trainer.placement.learner_bundle(r)] for r in range(len(trainer.learners))]


def run_case(family: str, model_path: str, output_dir: str, zero_stage: int, extra: list[str]) -> dict:
    """Iteration 1 with a checkpoint, then `--resume` for iteration 2; wall times and where the learners ran."""
    from cluster.config import load_config
    from cluster.trainer import Trainer

    times, nodes = {}, []
    for step, resume in (("first", False), ("resume", True)):
        cfg = load_config(PRESETS[family], [*multinode_overrides(family, model_path, output_dir, zero_stage), *extra,
                                            f"iterations={2 if resume else 1}"])
        start = time.perf_counter()
        with Trainer(cfg, resume=resume) as trainer:
            nodes = learner_nodes(trainer)
            if len(set(nodes)) != 2:
                raise RuntimeError(f"{family} ZeRO-{zero_stage}: learner ranks were placed on nodes {nodes}")
            if resume and trainer.iteration != 1:
                raise RuntimeError(f"{family} ZeRO-{zero_stage}: --resume restarted at iteration {trainer.iteration}")
            metrics = trainer.train()
        times[step] = round(time.perf_counter() - start, 1)
    shards = sorted(p.name for p in (Path(output_dir) / "checkpoints" / "iter_000002").glob("optimizer_rank*"))
    return {"seconds": times, "learner_nodes": [n[:8] for n in nodes], "optimizer_shards": shards,
            "metrics": {k: v for k, v in metrics.items() if k.startswith(("policy/", "learner/"))}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--family", nargs="+", choices=sorted(PRESETS), default=sorted(PRESETS))
    p.add_argument("--zero", nargs="+", type=int, choices=[2, 3], default=[2, 3])
    p.add_argument("--cpus-per-node", type=int, default=3)
    p.add_argument("overrides", nargs="*", help="key=value added to every run")
    args = p.parse_args(argv)

    import ray
    from ray.cluster_utils import Cluster

    report = {}
    # Cluster's nodes default to a 150 MiB object store: too small for FLUX's exported weights.
    node = {"num_cpus": args.cpus_per_node, "object_store_memory": 2 * 2**30}
    cluster = Cluster(initialize_head=True, head_node_args=node)
    try:
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        for family in args.family:
            folder = args.out_dir / "models" / FAMILIES[family][0]
            if not (folder / "model_index.json").is_file():
                start = time.perf_counter()
                build(args.out_dir / "models", family)
                print(f"[multinode] built {folder} in {time.perf_counter() - start:.0f} s", flush=True)
            for zero in args.zero:
                case = f"{family}_zero{zero}"
                try:
                    report[case] = run_case(family, str(folder), str(args.out_dir / "runs" / case), zero,
                                            args.overrides)
                except Exception as err:  # noqa: BLE001 - report it and go on to the next case
                    report[case] = {"error": f"{type(err).__name__}: {str(err)[:2000]}"}
                print(f"[multinode] {case}: {json.dumps(report[case])}", flush=True)
                (args.out_dir / "multinode_real_width.json").write_text(json.dumps(report, indent=1))
    finally:
        ray.shutdown()
        cluster.shutdown()
    return 1 if any("error" in case for case in report.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
