"""Placement groups: one bundle per rollout actor and per learner rank.

Separate placement gives each rollout actor and learner rank its own bundle; `colocate` puts rollout
actor i into learner rank i's bundle (their resources add up, so they share a GPU node slot);
cluster.layout 'hybrid' has no rollout bundles (its learner ranks sample, cluster/hybrid.py). The
strategy (PACK / SPREAD / STRICT_*) is Ray's. Reward actors are placed by their pools (rewards/pool.py)
with their own resources, outside this group, so reward servers can live on other nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group

from cluster.config import ClusterConfig


@dataclass
class Placement:
    group: PlacementGroup
    num_learner: int
    num_rollout: int
    colocate: bool

    def learner_bundle(self, rank: int) -> int:
        return rank

    def rollout_bundle(self, index: int) -> int:
        return index % self.num_learner if self.colocate else self.num_learner + index

    def spans_nodes(self) -> bool:
        """Whether the bundles sit on more than one node: only then do flowray's groups listen beyond
        loopback (common/net.py `bind_address`). Ready placements only (`create_placement` waits)."""
        return len(set(ray.util.placement_group_table(self.group)["bundles_to_node_id"].values())) > 1

    def remove(self) -> None:
        remove_placement_group(self.group)


def bundles(c: ClusterConfig) -> list[dict[str, float]]:
    """Resource bundles: learner ranks first, then rollout actors (or both in one bundle if colocated);
    the learner ranks' only where they are the rollout actors too (cluster.layout 'hybrid')."""

    def spec(cpus: float, gpus: float) -> dict[str, float]:
        return {"CPU": cpus, **({"GPU": gpus} if gpus else {})}

    learner = [spec(c.learner_num_cpus, c.learner_num_gpus) for _ in range(c.num_learner_ranks)]
    if not c.rollout_processes:
        return learner
    if c.colocate:
        per = -(-c.num_rollout_actors // c.num_learner_ranks)  # rollout actors sharing one learner bundle
        r = spec(c.rollout_num_cpus, c.rollout_num_gpus)
        return [{k: b.get(k, 0.0) + per * r.get(k, 0.0) for k in b.keys() | r.keys()} for b in learner]
    return learner + [spec(c.rollout_num_cpus, c.rollout_num_gpus) for _ in range(c.num_rollout_actors)]


def create_placement(c: ClusterConfig, timeout_s: float = 120.0) -> Placement:
    """Reserve the bundles; fail with the demand and what the cluster has if they cannot be placed."""
    specs = bundles(c)
    pg = placement_group(specs, strategy=c.placement_strategy, name="flowray")
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise RuntimeError(
            f"could not place {specs} ({c.placement_strategy}) within {timeout_s:.0f} s; the cluster has "
            f"{ray.cluster_resources()}: lower cluster.*_num_cpus/_num_gpus or the actor counts"
        )
    return Placement(pg, c.num_learner_ranks, c.num_rollout_actors, c.colocate)
