"""Where sampling and training run: one class per cluster.layout, chosen in one place (`LAYOUTS`).

  - Split: rollout actors and learner ranks are separate actors, each in its own bundle (or the rollout
    actors inside the learner ranks' bundles, cluster.colocate); after every update learner rank 0's
    weights go to every rollout actor (cluster/weight_sync.py `WeightSync`). Rollout actors restart on
    death and their groups are resampled with the same seeds.
  - Hybrid: one worker per learner rank samples with its live weights and trains them (cluster/hybrid.py);
    the sync moves nothing and checks that every rank samples with the same bits (`InPlaceSync`). A
    worker is a learner rank, so it does not restart: losing one stops the run, `--resume` continues.
The driver (cluster/trainer.py) asks its layout for the actors and the weight sync; the placement's bundles
follow `cluster.rollout_processes` (cluster/placement.py).
"""

from __future__ import annotations

from typing import ClassVar

from cluster.actors import hybrid_actors, learner_actors, rollout_actors
from cluster.config import ExperimentConfig
from cluster.placement import Placement
from cluster.weight_sync import InPlaceSync, WeightSync


class Split:
    rollouts_restart: ClassVar[bool] = (
        True  # a dead rollout actor is restarted by Ray and its groups resampled
    )

    @staticmethod
    def learners(cfg: ExperimentConfig, placement: Placement) -> list:
        return learner_actors(cfg, placement)

    @staticmethod
    def rollouts(cfg: ExperimentConfig, placement: Placement, learners: list) -> list:
        """Started once the learner ranks have formed their group and seen the storage path."""
        return rollout_actors(cfg, placement)

    @staticmethod
    def weight_sync(cfg: ExperimentConfig, learners: list, rollouts: list, spans_nodes: bool = False) -> WeightSync:
        return WeightSync(
            cfg.cluster.sync_backend, learners, rollouts, gather_on_all_ranks=cfg.learner.zero_stage == 3,
            spans_nodes=spans_nodes,
        )


class Hybrid:
    rollouts_restart: ClassVar[bool] = False  # the rollout actors are the learner ranks

    @staticmethod
    def learners(cfg: ExperimentConfig, placement: Placement) -> list:
        return hybrid_actors(cfg, placement)

    @staticmethod
    def rollouts(cfg: ExperimentConfig, placement: Placement, learners: list) -> list:
        return learners

    @staticmethod
    def weight_sync(cfg: ExperimentConfig, learners: list, rollouts: list, spans_nodes: bool = False) -> InPlaceSync:
        return InPlaceSync(learners)


LAYOUTS: dict[str, type] = {"split": Split, "hybrid": Hybrid}
