"""The one place where rollout and learner workers become Ray actors (reward actors: rewards/pool.py).

Actors are named (rollout-0, learner-0, ...) so the Ray dashboard reads well, placed in placement-group
bundles (cluster/placement.py), and rollout actors restart on death (their work is redone by the
driver with the same seeds, so nothing is counted twice). Learner ranks do not restart: a lost rank
breaks the collective group, so the driver stops with a message naming it and `--resume` continues.
"""

from __future__ import annotations

import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.config import ExperimentConfig
from cluster.hybrid import HybridWorker
from cluster.placement import Placement
from common.runtime_env import actor_env
from learner.worker import LearnerWorker
from rollout.worker import RolloutWorker


def device_for(num_gpus: float) -> str:
    """The torch device of a worker reserved `num_gpus` GPUs (launch.py eval uses the rollout setting)."""
    return "cuda" if num_gpus > 0 else "cpu"


def _env(cfg: ExperimentConfig) -> dict:
    """Actor environment (common/runtime_env.py): the driver's hub settings passed on, the thread count set."""
    return actor_env(cfg.cluster.torch_threads_per_actor)


def rollout_actors(cfg: ExperimentConfig, placement: Placement, max_restarts: int = -1) -> list:
    """Start `cluster.num_rollout_actors` rollout actors, one per rollout bundle. They restart without limit
    (Ray's max_restarts=-1): a fixed budget counts over the driver's whole life, so a run of days would lose an
    actor for good at its fourth death. What bounds a crash loop is the driver's per-iteration limit
    (cluster/scheduling.py MAX_ROLLOUT_RETRIES)."""
    c = cfg.cluster
    cls = ray.remote(RolloutWorker)
    actors = []
    for i in range(c.num_rollout_actors):
        actors.append(
            cls.options(
                name=f"rollout-{i}",
                num_cpus=c.rollout_num_cpus,
                num_gpus=c.rollout_num_gpus,
                max_restarts=max_restarts,
                max_task_retries=0,  # the driver decides what to redo (exactly once, same seeds)
                runtime_env=_env(cfg),
                scheduling_strategy=PlacementGroupSchedulingStrategy(placement.group, placement.rollout_bundle(i)),
            ).remote(
                cfg.model, cfg.sampling, algorithm=cfg.algorithm, name=f"rollout-{i}", device=device_for(c.rollout_num_gpus),
                torch_threads=c.torch_threads_per_actor, precision=cfg.learner.precision,
                rows_per_forward=c.rollout_rows_per_forward, images_per_decode=c.rollout_images_per_decode,
            )  # fmt: skip
        )
    return actors


def learner_actors(cfg: ExperimentConfig, placement: Placement, cls: type = LearnerWorker, prefix: str = "learner",
                   **extra) -> list:
    """Start the learner ranks; they form their process group in `setup`. `cls`, `prefix`, `extra`: another
    learner-rank class with its actor names and its own arguments (`hybrid_actors`)."""
    c = cfg.cluster
    remote = ray.remote(cls)
    return [
        remote.options(
            name=f"{prefix}-{r}",
            num_cpus=c.learner_num_cpus,
            num_gpus=c.learner_num_gpus,
            max_restarts=0,
            runtime_env=_env(cfg),
            scheduling_strategy=PlacementGroupSchedulingStrategy(placement.group, placement.learner_bundle(r)),
        ).remote(
            cfg.model, cfg.sampling, cfg.learner, algorithm=cfg.algorithm, rank=r, world_size=c.num_learner_ranks, seed=cfg.seed,
            device=device_for(c.learner_num_gpus), torch_threads=c.learner_torch_threads or c.torch_threads_per_actor,
            iterations=cfg.iterations, **extra,
        )  # fmt: skip
        for r in range(c.num_learner_ranks)
    ]


def hybrid_actors(cfg: ExperimentConfig, placement: Placement) -> list:
    """cluster.layout 'hybrid': one worker per learner rank (cluster/hybrid.py), in the learner ranks'
    bundles with their resources; like a learner rank it does not restart."""
    c = cfg.cluster
    return learner_actors(cfg, placement, HybridWorker, "hybrid", rows_per_forward=c.rollout_rows_per_forward,
                          images_per_decode=c.rollout_images_per_decode)
