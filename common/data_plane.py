"""Bulk rollout data by reference: the one module that puts rollout tensors in Ray's object store and
fetches them back.

A rollout actor samples a group, then `put_group` stores two objects (three where a scorer asks for
latents) in the object store (owned by that actor, in its node's shared memory) and returns a small
`GroupResult` whose bulk fields are ObjectRefs:
- the images (uint8 [I, H, W, 3]): the reward actors read them (rewards/pool.py passes the ref on);
- the learner's payload: only what the learner reads. Per-step losses read the transitions, stored as
  a latent chain where every distinct latent appears once (a trajectory's x_next is the next step's
  x_t, so storing (x_t, x_next) pairs keeps most latents twice); the forward-process family reads the
  final latents (x0) and nothing per step. Final latents of a per-step strategy and G2RPO's anchor
  image are never read by a learner and are not shipped. Every payload also carries the group's text
  conditioning (`Rollout.conditioning`: the prompt's embeddings once, not per image, and the negative
  prompt's for CFG) in the dtype the rollout actor sampled with, so learner ranks load only the
  transformer (no text encoders, no VAE) and see bit-identical conditioning;
- the final latents, only when a reward scorer declares `wants_latents` (rewards/base.py): the reward
  actors of that scorer read them, nobody else.
The driver handles the metadata only (ids, rewards, versions): it never calls `ray.get` on latents or
images. Each learner rank fetches its own groups' payloads (`fetch_groups`).

Objects owned by a rollout actor are lost with it (Ray's memory monitor kills actors too), so the
driver samples a dead actor's groups again with the same seeds (cluster/trainer.py): all of them while
the rollout runs, a group whose images are gone when it is scored, and a group whose payload a learner
rank could not fetch (`fetch_groups` names it) before the update starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from models.types import PromptEmbeds, Rollout, Transitions


@dataclass
class LatentChain:
    """Transitions with each distinct latent stored once: x_t = latents[input_rows[input_id]],
    x_next = latents[next_rows]."""

    latents: torch.Tensor  # [L, ...] distinct latents
    input_rows: torch.Tensor  # [U] long: row of `latents` of each distinct input
    next_rows: torch.Tensor  # [K] long: row of `latents` of each transition's x_next
    small: dict[str, torch.Tensor]  # input_id, sigma, sigma_next, log_prob, sample_id, step

    @staticmethod
    def of(t: Transitions) -> LatentChain:
        latents, (input_rows, next_rows) = distinct_rows(t.inputs, t.next_latents)
        small = {f.name: getattr(t, f.name) for f in dataclasses.fields(t) if f.name not in ("inputs", "next_latents")}
        return LatentChain(latents, input_rows, next_rows, small)

    def transitions(self) -> Transitions:
        """The recorded transitions, bit for bit."""
        return Transitions(inputs=self.latents[self.input_rows], next_latents=self.latents[self.next_rows], **self.small)


def distinct_rows(*stacks: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Each bitwise-distinct row of the stacks once (first occurrence order), and per stack the row of
    the result each of its rows equals."""
    seen: dict[bytes, list[int]] = {}
    kept: list[torch.Tensor] = []
    index = []
    for stack in stacks:
        rows = stack.detach().cpu().contiguous()
        raw = rows.reshape(rows.shape[0], math.prod(rows.shape[1:])).view(torch.uint8).numpy()  # view as bytes: bf16 has no numpy dtype
        ids = []
        for i in range(rows.shape[0]):
            key = hashlib.blake2b(raw[i], digest_size=16).digest()
            # A digest match is confirmed bitwise, so equal rows are exactly equal.
            same = next((j for j in seen.get(key, []) if torch.equal(kept[j].view(torch.uint8), rows[i].view(torch.uint8))), None)
            if same is None:
                same = len(kept)
                kept.append(rows[i])
                seen.setdefault(key, []).append(same)
            ids.append(same)
        index.append(torch.tensor(ids, dtype=torch.long))
    like = stacks[0]
    latents = torch.stack(kept) if kept else like.new_zeros((0, *like.shape[1:])).cpu()
    return latents, index


@dataclass
class LearnerPayload:
    """What a learner rank reads of one group: the latent chain of its transitions, and the final
    samples only for the forward-process family (their transitions are empty)."""

    chain: LatentChain
    final_latents: torch.Tensor | None
    # One row of the prompt's embeddings and one of the negative prompt's (CFG). The negative is the same
    # for every group, yet it travels with each payload rather than once per run: a payload is then
    # self-contained (a group resampled by a restarted actor, a learner rank restarted mid-run, need
    # nothing else), and a row is small beside a group's latents: SD3.5 at max_sequence_length 128 holds
    # 205 x 4096 bf16 tokens, 1.7 MB, against ~70 MB of a 24-image, 10-step group's fp32 latents at 512 px.
    conditioning: PromptEmbeds

    @staticmethod
    def of(rollout: Rollout) -> LearnerPayload:
        final = rollout.final_latents if rollout.learner_needs_final else None
        return LearnerPayload(LatentChain.of(rollout.transitions), final, rollout.conditioning)

    def restore(self, meta: Rollout) -> Rollout:
        """The record the learner trains on: `meta` (bulk stripped) with this payload's tensors back."""
        return dataclasses.replace(meta, transitions=self.chain.transitions(), final_latents=self.final_latents,
                                   conditioning=self.conditioning)


def strip(rollout: Rollout) -> Rollout:
    """The record's metadata: ids, counts and settings; its latents and embeddings live in the object store."""
    return dataclasses.replace(rollout, transitions=None, final_latents=None, anchor_latents=None, conditioning=None)


def put_group(result, latents: bool = False):
    """[rollout actor] Put a sampled group's images and learner payload in the object store; returns
    the GroupResult with `images` and `bulk` as ObjectRefs and `rollout` stripped. `latents`: put the final
    latents too (`latents`), for a scorer that declares wants_latents (rewards/base.py); off, they stay out."""
    import ray

    final = ray.put(result.rollout.final_latents.detach().cpu()) if latents else None
    return dataclasses.replace(result, rollout=strip(result.rollout), images=ray.put(np.ascontiguousarray(result.images)),
                               bulk=ray.put(LearnerPayload.of(result.rollout)), latents=final)


def fetch_groups(groups: list) -> tuple[list, list[int]]:
    """[learner rank] Fetch the payloads of groups (TrainGroup) sent by reference, in one `ray.get`;
    groups that carry their record in full (in-process callers) pass through. Returns the groups and
    the group indices whose payloads were lost (their rollout actor died; then nothing is returned)."""
    by_ref = [i for i, g in enumerate(groups) if g.bulk is not None]
    if not by_ref:
        return groups, []
    import ray
    from ray.exceptions import ObjectLostError

    try:
        payloads = ray.get([groups[i].bulk for i in by_ref])
    except ObjectLostError:
        lost = []
        for i in by_ref:  # which ones: one at a time
            try:
                ray.get(groups[i].bulk)
            except ObjectLostError:
                lost.append(groups[i].group_index)
        return [], lost
    out = list(groups)
    for i, payload in zip(by_ref, payloads, strict=True):
        out[i] = dataclasses.replace(groups[i], rollout=payload.restore(groups[i].rollout), bulk=None)
    return out, []


def conditioning_of(groups: list, rows: list[int]) -> PromptEmbeds:
    """[learner rank] The text conditioning of groups[g] (TrainGroup) for each g in `rows`, one row each:
    the embeddings its rollout actor sampled with (`LearnerPayload.conditioning`)."""
    missing = sorted({groups[g].group_index for g in rows if groups[g].rollout.conditioning is None})
    if missing:
        raise ValueError(
            f"groups {missing} carry no prompt conditioning (Rollout.conditioning): learner ranks load only the "
            "transformer and train on the embeddings RolloutWorker.rollout attaches to each group"
        )
    return PromptEmbeds.cat([groups[g].rollout.conditioning for g in rows])


@dataclass
class EvalShare:
    """One worker's share of an evaluation's images (uint8 [N, H, W, 3], cluster/evaluation.py): `images`
    holds them all for the scorers (in process the array; from a rollout actor its ObjectRef, which the
    reward pools pass on as in training) and `kept` the few that the driver's pictures show (share row ->
    image), inline, so that the driver never fetches the rest."""

    images: object  # np.ndarray | ray.ObjectRef
    kept: dict[int, np.ndarray]

    @staticmethod
    def of(images: np.ndarray, keep) -> EvalShare:
        return EvalShare(images, {i: images[i] for i in keep})


def put_eval_share(images: np.ndarray, keep) -> EvalShare:
    """[rollout actor] An evaluation share with its images in the object store and the rows `keep` inline."""
    import ray

    return dataclasses.replace(EvalShare.of(images, keep), images=ray.put(np.ascontiguousarray(images)))
