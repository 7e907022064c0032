"""Versioned weight sync from learner rank 0 to every rollout actor, acknowledged with a digest.

The weights travel in their own dtype, in buckets with per-bucket checksums that every receiver
verifies before loading (common/weight_buckets.py). Two backends:
- `object_store`: rank 0 puts each packed bucket into Ray's object store as soon as it is packed (the
  driver only sees their ObjectRefs); every rollout actor reads the same objects in place, bucket by
  bucket. Cheap to set up, robust to restarts.
- `collective`: a separate gloo/NCCL group (common/collective.py) with learner rank 0 as the source;
  buckets are broadcast straight from the engine's parameters, with no object-store export. A collective starts only when every member can join it: in async mode the
  rollout actors are still sampling the next iteration when the update ends, so the broadcast waits
  for those calls first (a learner waiting inside an NCCL broadcast for a long rollout trips NCCL's
  watchdog). If a member restarted (its process id changed), every surviving member closes the old
  group and a new one is built before the broadcast.
Either way every acknowledgement must carry the new version and the learner's sync digest (a hash of
every bucket's layout and checksum): after a sync the rollout actors hold exactly the learner's bits.
Under ZeRO-3 the weights are partitioned over the learner ranks and gathering them is a collective, so
every rank is called and gathers bucket by bucket (only rank 0 packs and sends).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import ray
from ray.exceptions import RayActorError

from common.actor_calls import call_when_available


@dataclass
class SyncReport:
    version: int
    seconds: float
    digest: str
    broadcast_seconds: float = 0.0  # learner rank 0's time inside the collective broadcast


class WeightSyncError(RuntimeError):
    pass


class WeightSync:
    def __init__(
        self, backend: str, learners: list, rollout_actors: list, *, gather_on_all_ranks: bool = False,
        spans_nodes: bool = False,
    ):
        if backend not in ("object_store", "collective"):
            raise ValueError(f"cluster.sync_backend {backend!r}: expected 'object_store' or 'collective'")
        self.backend, self.learner0, self.actors = backend, learners[0], rollout_actors
        self.gatherers = learners[1:] if gather_on_all_ranks else []  # ranks that only take part in gathers
        self.spans_nodes = spans_nodes  # the collective group listens on loopback unless the run spans nodes
        self.latest: tuple[list, str] | None = (
            None  # (bucket refs, digest) of the current version, once exported
        )
        self.latest_version: int | None = None  # None: nothing synced yet
        self._group_ready = False
        self._member_pids: list[int] = []  # the rollout actors' processes when the group was built

    def _pids(self) -> list[int]:
        return [
            call_when_available(lambda a=a: a.pid.remote(), "a rollout actor's process id")
            for a in self.actors
        ]

    def _build_group(self) -> None:
        """(Re)build the broadcast group; members that belonged to an older one close it first."""
        ip, port = ray.get(self.learner0.rendezvous.remote(self.spans_nodes))
        world = 1 + len(self.actors)
        calls = [self.learner0.join_sync_group.remote(ip, port, world)]
        calls += [a.join_sync_group.remote(ip, port, i + 1, world) for i, a in enumerate(self.actors)]
        ray.get(calls)
        self._member_pids = self._pids()
        self._group_ready = True

    def _export(self) -> tuple[list, str]:
        """Learner rank 0's packed buckets in the object store (every rank takes part under ZeRO-3)."""
        exported = self.learner0.export_sampling_buckets.remote()
        ray.get([lr.export_sampling_buckets.remote() for lr in self.gatherers])
        return ray.get(exported)

    def sync(self, version: int, busy: Sequence[ray.ObjectRef] = ()) -> SyncReport:
        """Send learner rank 0's weights as `version`. `busy`: calls the rollout actors are still
        running (async mode's next rollout); the collective backend waits for them before it starts."""
        start = time.perf_counter()
        self.latest, self.latest_version = None, version
        broadcast_seconds = 0.0
        if self.backend == "object_store":
            self.latest = self._export()
            refs, digest = self.latest
            calls = [a.load_buckets.remote(refs, version) for a in self.actors]
            acks = []
            for actor, call in zip(self.actors, calls, strict=True):
                try:
                    acks.append(ray.get(call))
                except RayActorError:  # died before acknowledging: Ray restarts it; give it the weights again
                    acks.append(
                        call_when_available(
                            lambda a=actor: a.load_buckets.remote(refs, version),
                            "weight sync to a restarted rollout actor",
                        )
                    )
        else:
            if busy:
                ray.wait(list(busy), num_returns=len(busy))
            if not self._group_ready or self._pids() != self._member_pids:
                self._build_group()
            send = self.learner0.broadcast_weights.remote()
            gathers = [lr.broadcast_weights.remote() for lr in self.gatherers]
            acks = ray.get([a.receive_weights.remote(version) for a in self.actors])
            sent = ray.get(send)
            ray.get(gathers)
            digest, broadcast_seconds = sent["digest"], sent["seconds"]
        bad = [a for a in acks if a["version"] != version or a["digest"] != digest]
        if bad:
            raise WeightSyncError(f"weight sync to version {version} failed for {[a['actor'] for a in bad]}")
        return SyncReport(version, time.perf_counter() - start, digest, broadcast_seconds)

    def resend(self, actor, restarted: bool = True) -> None:
        """Give a rollout actor the current weights again through the object store (after a restart, or
        after an evaluation with EMA weights); the collective backend exports them for this on first
        need only (the learner's weights are still the synced version: resends happen between a sync
        and the next update). A restarted actor's collective membership died with it, so the group is
        rebuilt at the next sync."""
        if self.latest_version is not None:
            if self.latest is None:
                self.latest = self._export()
            refs, version = self.latest[0], self.latest_version
            call_when_available(
                lambda: actor.load_buckets.remote(refs, version), "weights for a rollout actor"
            )
        if restarted:
            self._group_ready = False


class InPlaceSync:
    """cluster.layout 'hybrid': every worker samples with the weights it trains (cluster/hybrid.py), so a
    sync moves nothing; it asks each worker for the digest of the weights it now samples with and
    checks that every rank holds the same bits (data-parallel ranks that drifted apart would train on
    samples their neighbours never drew)."""

    backend = "in_place"

    def __init__(self, workers: list):
        self.actors = workers
        self.latest_version: int | None = None

    def sync(self, version: int, busy: Sequence[ray.ObjectRef] = ()) -> SyncReport:
        start = time.perf_counter()
        self.latest_version = version
        acks = ray.get([w.sampling_digest.remote(version) for w in self.actors])
        digest = acks[0]["digest"]
        bad = [a["actor"] for a in acks if a["version"] != version or a["digest"] != digest]
        if bad:
            raise WeightSyncError(
                f"version {version}: {bad} sample with other weights than {acks[0]['actor']} "
                "(the data-parallel ranks drifted apart)"
            )
        return SyncReport(version, time.perf_counter() - start, digest)

    def resend(self, actor, restarted: bool = True) -> None:
        """The training weights back in place after an evaluation with others (a worker never restarts)."""
        ray.get(actor.restore_sampling_weights.remote())
