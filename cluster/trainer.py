"""The driver. One train step reads like the algorithm:

    results = self.rollout(iteration)          # rollout actors sample prompt groups (SDE, log-probs)
    scores  = self.reward(results)             # reward actors score the decoded images
    groups  = self.advantage(results, scores)  # group-relative advantages per reward group
    learned = self.update(groups, iteration)   # learner ranks: clipped GRPO + KL with DeepSpeed
    synced  = self.sync()                      # learner rank 0 -> every rollout actor, versioned

Async mode overlaps the sampling of iteration k+1 with the update of iteration k (staleness 1, logged).
Every group's randomness is seeded from (seed, iteration, group), so a group redone after a rollout
actor restart is identical and is counted once.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import ray
import torch
import yaml
from ray.exceptions import ObjectLostError, RayActorError

from cluster import checkpoints
from cluster.actors import learner_actors, rollout_actors
from cluster.config import DataConfig, ExperimentConfig, resolve
from cluster.evaluation import (
    PICTURED,
    EvalPlan,
    Evaluation,
    SampledImages,
    compare_evaluations,
    comparison_table,
    evaluate,
    image_grid,
    plan_for,
    sample_sharded,
)
from cluster.metrics import MetricsLogger, progress_line, reward_by_tag
from cluster.placement import create_placement
from cluster.plots import before_after_grid, plot_curves
from cluster.ray_init import require_fit
from cluster.weight_sync import WeightSync
from common.actor_calls import call_when_available
from common.storage import StorageError, remove_sentinel, resolve_output_dir, write_sentinel
from learner.advantages import grpo_advantages, no_signal_mask
from learner.worker import TrainGroup
from models.seeding import derive_seed
from rewards.base import ScoreResult, build_scorers
from rewards.combine import combine
from rewards.pool import RewardBatch, RewardPools
from rewards.prompts import binding_mirrors, layout_mirrors, load_prompts, prompt_tags
from rollout.worker import GroupRequest, GroupResult

MAX_ROLLOUT_RETRIES = 3  # per actor and iteration; matches the actors' max_restarts


@dataclass
class PendingRollout:
    """The rollout calls in flight: one per group, each with its actor and request."""

    calls: dict = field(default_factory=dict)  # ObjectRef -> (actor index, GroupRequest)
    by_actor: dict = field(default_factory=lambda: defaultdict(set))  # actor index -> its group indices

    def add(self, actors: list, a: int, request: GroupRequest) -> None:
        self.calls[actors[a].rollout_by_reference.remote(request)] = (a, request)
        self.by_actor[a].add(request.group_index)

    def refs(self) -> list[ray.ObjectRef]:
        return list(self.calls)

    def drop_actor(self, a: int) -> list[GroupRequest]:
        """Forget actor `a`'s calls in flight (they fail with it); returns their requests."""
        lost = [ref for ref, (b, _) in self.calls.items() if b == a]
        return [self.calls.pop(ref)[1] for ref in lost]


class LearnerRankError(RuntimeError):
    """A learner rank died: the data-parallel group cannot continue; resume from the last checkpoint."""


@dataclass
class Scored:
    """One sampled group with its per-scorer rewards."""

    result: GroupResult
    scores: dict  # scorer -> ScoreResult


def in_process_scorers(cfg: ExperimentConfig) -> dict:
    """The config's scorers built in this process (rewards.base.build_scorers)."""
    return build_scorers(cfg.rewards.scorers)


def reward_inputs(res: GroupResult) -> tuple:
    """(images, prompts, metadata) of a sampled group, as scorers and the reward pools take them."""
    n = res.num_images
    return res.images, [res.request.prompt] * n, [res.request.metadata] * n


def score_in_process(results: Sequence[GroupResult], scorers: dict) -> list[Scored]:
    """Score each sampled group with `in_process_scorers`."""
    return [Scored(r, {name: scorer(*reward_inputs(r)) for name, scorer in scorers.items()}) for r in results]


def prompts_for_iteration(num_prompts: int, per_iteration: int, seed: int, iteration: int) -> list[int]:
    """Prompt indices of an iteration: epochs of seeded permutations, a pure function of (seed, iteration)."""
    out = []
    for pos in range(iteration * per_iteration, (iteration + 1) * per_iteration):
        epoch, offset = divmod(pos, num_prompts)
        perm = torch.randperm(num_prompts, generator=torch.Generator().manual_seed(derive_seed(seed, "data", epoch)))
        out.append(int(perm[offset]))
    return out


def tag_turns(names: Sequence[str], weights: Mapping[str, int]) -> list[str]:
    """One round of tag turns: every tag once, then again for each tag whose weight (default 1) allows,
    so weights {a: 2} over tags [a, b, c] give [a, b, c, a]; a tag's turns stay spread over the round."""
    rounds = max((weights.get(n, 1) for n in names), default=1)
    return [n for k in range(rounds) for n in names if weights.get(n, 1) > k]


def tag_balanced_prompts_for_iteration(tags: Sequence[str], per_iteration: int, seed: int, iteration: int,
                                       weights: Mapping[str, int] | None = None) -> list[int]:
    """Prompt indices of an iteration when tags take turns: slot p of the run goes to the tag at p mod R
    of `tag_turns` (tags in sorted order, R turns per round; with no weights every tag once), and each tag
    walks seeded permutations of its own prompts. A pure function of (tags, weights, seed, iteration), so
    a resumed run samples what the uninterrupted one would have."""
    pick = _tag_balanced_picker(tags, seed, weights)
    return [pick(pos) for pos in range(iteration * per_iteration, (iteration + 1) * per_iteration)]


def _tag_balanced_picker(tags: Sequence[str], seed: int, weights: Mapping[str, int] | None) -> Callable[[int], int]:
    """The prompt index of turn `pos` of the run (see tag_balanced_prompts_for_iteration)."""
    by_tag: dict[str, list[int]] = defaultdict(list)
    for i, tag in enumerate(tags):
        by_tag[tag].append(i)
    weights = weights or {}
    turns = tag_turns(sorted(by_tag), weights)
    # the k-th turn of a tag within a round, so its prompts are walked in order across rounds
    nth = [turns[:slot].count(name) for slot, name in enumerate(turns)]

    def pick(pos: int) -> int:
        round_, slot = divmod(pos, len(turns))
        name = turns[slot]
        members = by_tag[name]
        epoch, offset = divmod(round_ * weights.get(name, 1) + nth[slot], len(members))
        gen = torch.Generator().manual_seed(derive_seed(seed, "data", name, epoch))
        return members[int(torch.randperm(len(members), generator=gen)[offset])]

    return pick


def prompt_mirrors(records: Sequence[dict], data: DataConfig) -> list[list[int]]:
    """Each training record's mirrors under data.mirror_position_prompts (the opposite layout) and
    data.mirror_binding_prompts (the colours exchanged); a record is one kind or neither, so the lists join."""
    kinds = [("mirror_position_prompts", layout_mirrors,
              "two objects with a relation, and the opposite layout in the file too"),
             ("mirror_binding_prompts", binding_mirrors,
              "two coloured objects, and the same two with the colours exchanged in the file too")]
    mirrors: list[list[int]] = [[] for _ in records]
    for name, find, what in kinds:
        if getattr(data, name):
            found = find(records)
            if not any(found):
                raise ValueError(f"data.{name} is set but no record of {data.train_prompts} has a mirror ({what})")
            mirrors = [a + b for a, b in zip(mirrors, found, strict=True)]
    return mirrors


def mirrored_prompts_for_iteration(tags: Sequence[str], mirrors: Sequence[Sequence[int]], per_iteration: int,
                                   seed: int, iteration: int, weights: Mapping[str, int] | None = None) -> list[int]:
    """tag_balanced_prompts_for_iteration where every turn that draws a prompt with mirrors
    (`prompt_mirrors`: the opposite layout, the colours exchanged) also draws one of them (seeded), into the
    same iteration: "a circle left of a square" is trained beside "a square left of a circle". A binary
    reward pays one fixed layout (or binding) per object pair on half of that pair's prompts whatever they
    say; trained side by side, the pushes toward either cancel and what is left depends on the words
    (README, Results).
    A pure function of its arguments (`MirroredPromptOrder` is the same order, remembered between calls)."""
    return MirroredPromptOrder(tags, mirrors, per_iteration, seed, weights)(iteration)


class MirroredPromptOrder:
    """`mirrored_prompts_for_iteration` for a run. Turns become units of one or two prompts; an iteration
    takes them in order, and a pair that does not fit in the slots left waits for the next iteration while
    later single prompts fill them. Where an iteration starts depends on every earlier one, so the order
    remembers where the last iteration it gave ended (the next costs one iteration's turns) and replays
    from the run's start for any other (a resumed run samples what the uninterrupted one did)."""

    def __init__(self, tags: Sequence[str], mirrors: Sequence[Sequence[int]], per_iteration: int, seed: int,
                 weights: Mapping[str, int] | None = None):
        if per_iteration < 2 or (per_iteration % 2 and all(mirrors)):
            raise ValueError(f"data.mirror_*_prompts: {per_iteration} prompts per iteration cannot hold the "
                             "prompt pairs (one prompt per iteration, or an odd number when every prompt has a mirror)")
        self.mirrors, self.per_iteration, self.seed = mirrors, per_iteration, seed
        self.pick = _tag_balanced_picker(tags, seed, weights)
        self._restart()

    def _restart(self) -> None:
        self.next_iteration, self.pos, self.waiting, self.last = 0, 0, [], []

    def _unit(self) -> list[int]:
        i, pos = self.pick(self.pos), self.pos
        self.pos += 1
        if not self.mirrors[i]:
            return [i]
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "mirror", pos))
        return [i, self.mirrors[i][int(torch.randint(len(self.mirrors[i]), (1,), generator=gen))]]

    def _fill(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.per_iteration:
            room = self.per_iteration - len(out)
            ready = next((u for u in self.waiting if len(u) <= room), None)
            if ready is not None:
                self.waiting.remove(ready)
            else:
                ready = self._unit()
                if len(ready) > room:
                    self.waiting.append(ready)
                    continue
            out += ready
        return out

    def __call__(self, iteration: int) -> list[int]:
        if iteration == self.next_iteration - 1:  # asked again (a lost group is resampled)
            return list(self.last)
        if iteration < self.next_iteration:
            self._restart()
        while self.next_iteration <= iteration:
            self.last = self._fill()
            self.next_iteration += 1
        return list(self.last)


def iteration_advantages(scored: list[Scored], cfg: ExperimentConfig) -> tuple[list[TrainGroup], dict]:
    """Advantages over the whole iteration at once (so `global` std sees every image); images with a
    masked reward are left out of their group, and samples left with no valid image are not trained."""
    names = [s.name for s in cfg.rewards.scorers]
    weights = cfg.rewards.weights()
    offset_g = offset_s = 0
    group_ids, sample_ids, per_reward, valid = [], [], {n: [] for n in names}, []
    for s in scored:
        r = s.result.rollout
        group_ids.append(r.reward_group + offset_g)
        sample_ids.append(r.image_sample_id + offset_s)
        for n in names:
            per_reward[n].append(torch.from_numpy(s.scores[n].reward))
        valid.append(torch.from_numpy(np.all([np.isfinite(s.scores[n].reward) for n in names], axis=0)))
        offset_g += r.num_reward_groups
        offset_s += r.num_samples
    group_ids, sample_ids, valid = torch.cat(group_ids), torch.cat(sample_ids), torch.cat(valid)
    rewards = {n: torch.cat(v).double() for n, v in per_reward.items()}
    if cfg.rewards.combination == "weighted_sum":
        rewards = {"combined": sum(weights[n] * rewards[n] for n in names)}
        weights = {"combined": 1.0}
    lc = cfg.learner
    adv = grpo_advantages(
        {n: r[valid] for n, r in rewards.items()}, group_ids[valid], sample_ids[valid], offset_s,
        weights=weights, std_mode=lc.std_mode, clip=lc.adv_clip, eps=lc.adv_eps, std_form=lc.adv_std,
    )  # fmt: skip
    has_valid = torch.zeros(offset_s, dtype=torch.bool).index_fill_(0, sample_ids[valid], True)
    zero_std = no_signal_mask({n: r[valid] for n, r in rewards.items()}, group_ids[valid], weights)
    keep = has_valid.clone()
    if lc.drop_zero_std_groups:
        informative = torch.zeros(offset_s, dtype=torch.bool).index_fill_(0, sample_ids[valid][~zero_std], True)
        keep &= informative
    groups, start = [], 0
    for s in scored:
        n = s.result.rollout.num_samples
        groups.append(TrainGroup(s.result.request.prompt, s.result.rollout, adv[start : start + n].float(),
                                 keep[start : start + n], s.result.policy_version, s.result.request.group_index,
                                 bulk=s.result.bulk))
        start += n
    group_zero = zero_std.float().mean().item() if zero_std.numel() else 1.0
    return groups, {
        "advantage/abs_mean": adv[keep].abs().mean().item() if keep.any() else 0.0,
        "advantage/zero_std_fraction": group_zero,
        "advantage/samples_kept": float(keep.sum()),
        "reward/masked_images": float((~valid).sum()),
    }




def mean_over_ranks(per_rank: Sequence[dict[str, float]]) -> dict[str, float]:
    """Each metric averaged over the ranks that report it. A rank whose share was only zero-weight
    padding reports no policy metrics; taking the keys from rank 0 alone dropped every other rank's."""
    keys = dict.fromkeys(k for metrics in per_rank for k in metrics)
    return {k: float(np.mean([m[k] for m in per_rank if k in m])) for k in keys}


class Trainer:
    def __init__(self, cfg: ExperimentConfig, *, resume: bool = False):
        # The storage path is resolved once, here on the driver; actors get it absolute (common/storage.py).
        out = resolve_output_dir(cfg.logging.output_dir)
        self.cfg = cfg.model_copy(update={"logging": cfg.logging.model_copy(update={"output_dir": out})})
        self.resume = resume
        self.prompts = load_prompts(resolve(cfg.data.train_prompts))
        self.tags = (prompt_tags(self.prompts, cfg.data.train_prompts, cfg.data.tag_weights)
                     if cfg.data.prompt_order == "tag_balanced" else None)
        self.mirrored = None
        if cfg.data.mirror_position_prompts or cfg.data.mirror_binding_prompts:
            mirrors = prompt_mirrors(self.prompts, cfg.data)
            self.mirrored = MirroredPromptOrder(self.tags, mirrors, cfg.prompts_per_iteration, cfg.seed,
                                                cfg.data.tag_weights)
        self.iteration = 0  # iterations completed
        self._last_checkpoint = -1  # iteration of the newest checkpoint written by this process
        self.nfe_total = 0  # rollout velocity evaluations so far (this process)
        self.version = 0  # policy version held by the learner
        self.logger: MetricsLogger | None = None
        self._holding = "both"  # cluster.colocate_offload: the side resident on the shared bundles (`_hold`)

    # ------------------------------------------------------------------ setup / teardown

    def setup(self) -> None:
        c = self.cfg.cluster
        require_fit(self.cfg)  # fail now, naming the keys, rather than wait forever for unplaceable actors
        out = Path(self.cfg.logging.output_dir)
        if not self.resume and (archived := checkpoints.archive_previous_run(out)) is not None:
            print(f"[flowray] {out} held an earlier run: moved it to {archived}", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False))
        self.placement = create_placement(c)
        self.learners = learner_actors(self.cfg, self.placement)
        master = ray.get(self.learners[0].rendezvous.remote())
        ray.get([learner.setup.remote(*master) for learner in self.learners])
        self._check_storage()
        self.rollouts = rollout_actors(self.cfg, self.placement)
        self.rewards = RewardPools(self.cfg.rewards)
        self.sync_weights = WeightSync(c.sync_backend, self.learners, self.rollouts,
                                       gather_on_all_ranks=self.cfg.learner.zero_stage == 3)
        lc = self.cfg.logging
        wandb = {"project": lc.wandb_project, "mode": lc.wandb_mode, "name": self.cfg.name,
                 "config": self.cfg.model_dump(mode="json")} if lc.wandb else None
        self.logger = MetricsLogger(lc.output_dir, tensorboard=lc.tensorboard, wandb=wandb)
        if self.resume:
            self._restore()
        # Rollout actors initialise their own LoRA adapters; the first sync gives them the learner's.
        self.sync()
        self._hold("rollout")

    def _check_storage(self) -> None:
        """Every learner rank must see the storage path the driver writes (a shared filesystem on a
        multi-node cluster): the driver writes a sentinel, each rank reads it back."""
        out = self.cfg.logging.output_dir
        path, token = write_sentinel(out)
        try:
            nodes = self._call_learners(lambda lr, r: lr.check_storage.remote(path, token), with_rank=True)
        except StorageError as err:
            raise StorageError(str(getattr(err, "cause", err))) from None
        finally:
            remove_sentinel(path)
        seen = ", ".join(f"learner-{r} (node {n[:8]})" for r, n in enumerate(nodes))
        print(f"[flowray] storage {out}: seen by {seen}", flush=True)

    def _restore(self) -> None:
        ckpt = checkpoints.latest_checkpoint(self.cfg.logging.output_dir)
        if ckpt is None:
            print(f"[flowray] --resume: no complete checkpoint under {self.cfg.logging.output_dir}; starting fresh")
            self.logger.drop_from(0)
            return
        state = checkpoints.read_state(ckpt)
        if state["seed"] != self.cfg.seed:
            raise ValueError(f"checkpoint {ckpt} was made with seed {state['seed']}, the config says {self.cfg.seed}")
        versions = self._call_learners(lambda learner: learner.load_checkpoint.remote(str(ckpt)))
        self.iteration, self.version = int(state["iteration"]), int(versions[0])
        self.logger.drop_from(self.iteration)  # rows a crashed run logged after its last checkpoint
        print(f"[flowray] resumed from {ckpt} (iteration {self.iteration}, policy version {self.version})")

    def __enter__(self) -> Trainer:
        """`with Trainer(cfg) as trainer:` sets up, and shuts down on the way out, also when setup fails."""
        try:
            self.setup()
        except BaseException:
            self.shutdown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Kill this run's actors and free its placement group; safe after a partial setup."""
        if self.logger is not None:
            self.logger.close()
        if hasattr(self, "rewards"):
            self.rewards.shutdown()
        for actor in getattr(self, "rollouts", []) + getattr(self, "learners", []):
            ray.kill(actor, no_restart=True)
        if hasattr(self, "placement"):
            self.placement.remove()

    # ------------------------------------------------------------------ the five stages

    def requests(self, iteration: int) -> list[GroupRequest]:
        n, seed = self.cfg.prompts_per_iteration, self.cfg.seed
        if self.tags is None:
            idx = prompts_for_iteration(len(self.prompts), n, seed, iteration)
        elif self.mirrored is not None:
            idx = self.mirrored(iteration)
        else:
            idx = tag_balanced_prompts_for_iteration(self.tags, n, seed, iteration, self.cfg.data.tag_weights)
        return [
            GroupRequest(g, self.prompts[i]["prompt"], self.prompts[i], derive_seed(self.cfg.seed, "group", iteration, g), iteration)
            for g, i in enumerate(idx)
        ]

    def submit_rollout(self, iteration: int) -> PendingRollout:
        """Hand the iteration's groups to the rollout actors, round-robin, one call per group (an actor
        runs its calls in order), so each group can be scored as soon as it is sampled."""
        pending = PendingRollout()
        for req in self.requests(iteration):
            pending.add(self.rollouts, self._actor_of(req), req)
        return pending

    def _actor_of(self, request: GroupRequest) -> int:
        """The rollout actor that samples a group (round-robin), and samples it again if it is lost."""
        return request.group_index % len(self.rollouts)

    def rollout(self, pending: PendingRollout) -> tuple[list[GroupResult], dict]:
        """Collect the groups, sending each one's images to the reward pools as soon as it is sampled
        (scoring overlaps sampling). Results carry ObjectRefs of the bulk data (common/data_plane.py);
        the driver reads metadata only. A dead actor's groups are all resampled (same seeds) once Ray
        has restarted it: the objects it put died with it."""
        done: dict[int, tuple[GroupResult, dict]] = {}
        retries = dict.fromkeys(range(len(self.rollouts)), 0)
        while pending.calls:
            ready, _ = ray.wait(list(pending.calls), num_returns=1)
            a, req = pending.calls.pop(ready[0])
            try:
                res = ray.get(ready[0])
            except RayActorError:
                retries[a] += 1
                if retries[a] > MAX_ROLLOUT_RETRIES:
                    raise
                finished = sorted(pending.by_actor[a] & done.keys())  # their images and latents are gone too
                lost = pending.drop_actor(a) + [req] + [done.pop(g)[0].request for g in finished]
                print(f"[flowray] rollout-{a} died; waiting for its restart and resampling its {len(lost)} groups",
                      flush=True)
                self.sync_weights.resend(self.rollouts[a])
                for r in sorted(lost, key=lambda r: r.group_index):
                    pending.add(self.rollouts, a, r)
                continue
            done[req.group_index] = (res, self.rewards.submit(*reward_inputs(res)))
        order = sorted(done)
        return [done[g][0] for g in order], {"handles": [done[g][1] for g in order]}

    def reward(self, results: list[GroupResult], pending_rewards: dict) -> list[Scored]:
        scored = []
        for res, handle in zip(results, pending_rewards["handles"], strict=True):
            try:
                scores = self.rewards.gather(handle).results
            except ObjectLostError:  # its rollout actor died after returning it: the images went with it
                res = self._resample(res.request)
                scores = self.rewards.score(*reward_inputs(res)).results
            scored.append(Scored(res, scores))
        return scored

    def _resample(self, request: GroupRequest) -> GroupResult:
        """Sample a group again (same seed) on its actor once Ray has restarted it."""
        a = self._actor_of(request)
        print(f"[flowray] rollout-{a} died holding group {request.group_index}'s images and latents; resampling it",
              flush=True)
        self.sync_weights.resend(self.rollouts[a])
        return ray.get(self.rollouts[a].rollout_by_reference.remote(request))

    def _refetchable(self, group: TrainGroup, iteration: int) -> TrainGroup:
        """A trained group whose tensors were lost, with those of the same sample again: same seed and
        same weights give the same group bit for bit, so its rewards and advantages still hold."""
        fresh = self._resample(self.requests(iteration)[group.group_index])
        if fresh.policy_version != group.policy_version:  # async mode: the actor holds newer weights now
            raise RuntimeError(f"iteration {iteration}: group {group.group_index}'s rollout tensors were lost with its "
                               f"rollout actor and its policy version {group.policy_version} is gone too; restart "
                               "with --resume")
        return replace(group, bulk=fresh.bulk)

    def advantage(self, scored: list[Scored]) -> tuple[list[TrainGroup], dict]:
        return iteration_advantages(scored, self.cfg)

    def update(self, groups: list[TrainGroup], iteration: int) -> dict:
        """Each learner rank trains on its share of the groups (round-robin); metrics averaged over ranks."""
        n = len(self.learners)
        # Each rank fetches its groups' tensors first, so a lost one is redone before any collective starts.
        for _ in range(MAX_ROLLOUT_RETRIES + 1):
            lost = {g for part in self._call_learners(lambda lr, r, gs=groups: lr.receive.remote(gs[r::n]), with_rank=True)
                    for g in part}
            if not lost:
                break
            groups = [self._refetchable(g, iteration) if g.group_index in lost else g for g in groups]
        else:
            raise RuntimeError(f"iteration {iteration}: rollout tensors of groups {sorted(lost)} kept being lost")
        per_rank = self._call_learners(lambda lr, r: lr.train.remote(None, iteration), with_rank=True)
        self.version = ray.get(self.learners[0].get_version.remote())
        return mean_over_ranks(per_rank)

    def _hold(self, side: str) -> float:
        """cluster.colocate_offload: make `side` ('learner' or 'rollout') resident on the shared bundles,
        offloading the other side first (common/offload.py), so a bundle never holds both; returns the
        seconds it took (0 when off or already so)."""
        if not self.cfg.cluster.colocate_offload or self._holding == side:
            return 0.0
        start = time.perf_counter()
        idle, active = (self.rollouts, self.learners) if side == "learner" else (self.learners, self.rollouts)
        ray.get([actor.offload.remote() for actor in idle])
        ray.get([actor.reload.remote() for actor in active])
        self._holding = side
        return time.perf_counter() - start

    def sync(self, busy: Sequence[ray.ObjectRef] = ()) -> dict:
        """Learner rank 0 -> every rollout actor; `busy`: rollout calls still running (async mode)."""
        report = self.sync_weights.sync(self.version, busy=busy)
        return {"time/sync": report.seconds, "time/sync_broadcast": report.broadcast_seconds,
                "charts/policy_version": float(report.version)}

    # ------------------------------------------------------------------ the loop

    def train(self, stop: Callable[[dict], bool] | None = None,
              evaluate_when: Callable[[dict], bool] | None = None) -> dict:
        """Run the remaining iterations (or until `stop(metrics)` is true after an iteration: budgets).
        Evaluates every `logging.eval_every` iterations and after any iteration where
        `evaluate_when(metrics)` is true (benchmarks evaluate where a budget is crossed).
        If anything but a learner rank fails, the iterations already completed are checkpointed before
        the error propagates, so `--resume` loses nothing."""
        try:
            return self._train(stop, evaluate_when)
        except LearnerRankError:
            raise
        except BaseException:
            if self.iteration > 0 and self.iteration != self._last_checkpoint:
                print(f"[flowray] error: checkpointing the {self.iteration} completed iterations first", flush=True)
                self.checkpoint()
            raise

    def _train(self, stop: Callable[[dict], bool] | None, evaluate_when: Callable[[dict], bool] | None) -> dict:
        cfg, last = self.cfg, {}
        start_it = self.iteration
        probe_every = cfg.logging.probe_every
        if probe_every and start_it == 0:  # the monitor's starting point: probes/probe_000000.json, curves.png
            self.probe("probe_000000")
        wall_start, eval_seconds = time.perf_counter(), 0.0
        pending = self.submit_rollout(start_it) if start_it < cfg.iterations else None
        for it in range(start_it, cfg.iterations):
            t0 = time.perf_counter()
            results, pending_rewards = self.rollout(pending)
            t_roll = time.perf_counter() - t0
            t_offload = self._hold("learner")  # colocated: rollout weights out, learner state back
            if cfg.cluster.async_mode and it + 1 < cfg.iterations:
                pending = self.submit_rollout(it + 1)  # sampled with this version's weights: staleness 1
            scored = self.reward(results, pending_rewards)
            t_rew = time.perf_counter() - t0 - t_roll - t_offload
            groups, adv_metrics = self.advantage(scored)
            learned = self.update(groups, it)
            t_upd = time.perf_counter() - t0 - t_roll - t_rew - t_offload
            t_offload += self._hold("rollout")  # learner state out (its trainable weights stay for the sync)
            busy = pending.refs() if cfg.cluster.async_mode and it + 1 < cfg.iterations else []
            synced = self.sync(busy)
            t_step = time.perf_counter() - t0
            probed = {}
            if probe_every and (it + 1) % probe_every == 0:  # before the next rollout takes the actors
                probed = self.probe(f"probe_{it + 1:06d}", step=it)
                probed["time/probe"] = time.perf_counter() - t0 - t_step
                eval_seconds += probed["time/probe"]
            # The next rollout overlaps evaluation and checkpointing, except when colocated sides take turns
            # (a checkpoint brings the learner's state back): then it starts after them.
            overlap_next = not cfg.cluster.async_mode and not cfg.cluster.colocate_offload
            if overlap_next and it + 1 < cfg.iterations:
                pending = self.submit_rollout(it + 1)
            self.iteration = it + 1
            metrics = {
                **self._reward_metrics(scored), **adv_metrics, **learned, **synced, **probed,
                "time/rollout": t_roll, "time/reward": t_rew, "time/update": t_upd, "time/offload": t_offload,
                "time/step": t_step,
                "charts/images_per_s": sum(s.result.num_images for s in scored) / max(t_roll + t_rew, 1e-9),
                "charts/transitions_per_s": learned.get("learner/transitions", 0.0) * len(self.learners)
                / max(learned.get("learner/seconds", 1e-9), 1e-9),
                "charts/nfe_per_group": float(np.mean([s.result.rollout.nfe for s in scored])),
                # training wall time: evaluations inside the loop are not counted (budgets compare training)
                "charts/wall_seconds": time.perf_counter() - wall_start - eval_seconds,
            }  # fmt: skip
            self.nfe_total += sum(s.result.rollout.nfe for s in scored)
            metrics["charts/nfe_total"] = float(self.nfe_total)
            stopping = stop is not None and stop(metrics) and it + 1 < cfg.iterations
            periodic = cfg.logging.eval_every and (it + 1) % cfg.logging.eval_every == 0
            wanted = periodic or (evaluate_when is not None and evaluate_when(metrics))
            # The last iteration (or the one a budget stops at) is evaluated by run(), not twice.
            if wanted and it + 1 < cfg.iterations and not stopping:
                t_eval = time.perf_counter()
                summary = self.evaluate(name=f"eval_iter{it + 1:06d}").summary
                eval_seconds += time.perf_counter() - t_eval
                metrics.update({f"eval/{k}": v for k, v in summary.items() if isinstance(v, float)})
            self.logger.log(it, metrics, groups=[s.result.request.group_index for s in scored],
                            policy_versions=[s.result.policy_version for s in scored])
            if (it + 1) % cfg.logging.log_every == 0 or it + 1 == cfg.iterations:
                print(progress_line(it + 1, cfg.iterations, metrics), flush=True)
            every = cfg.logging.checkpoint_every
            if (every and (it + 1) % every == 0) or it + 1 == cfg.iterations:
                self.checkpoint()
            if cfg.cluster.colocate_offload and it + 1 < cfg.iterations and not stopping:
                pending = self.submit_rollout(it + 1)
            last = metrics
            if stopping:
                if self._last_checkpoint != self.iteration:
                    self.checkpoint()
                break
        return last

    def run(self, stop: Callable[[dict], bool] | None = None,
            evaluate_when: Callable[[dict], bool] | None = None) -> Evaluation:
        """The whole job: evaluate the base policy (unless resuming), train, evaluate, compare the two
        image by image (comparison.json), and draw curves.png and the before/after grid."""
        out = Path(self.cfg.logging.output_dir)
        base = None
        if self.cfg.logging.eval_base and self.iteration == 0:
            base = self.evaluate(name="eval_base")
            self.train_check(name="eval_base_train")
        self.train(stop, evaluate_when)
        final = self.evaluate()
        self.train_check(name="eval_train")
        for before, after, file in (("eval_base", "eval", "comparison.json"),
                                    ("eval_base_train", "eval_train", "comparison_train.json")):
            if (out / f"{before}.json").is_file() and (out / f"{after}.json").is_file():
                comparison = compare_evaluations(out, out, name=before, name_after=after)
                (out / file).write_text(json.dumps(comparison, indent=2))
                print(f"[flowray] {after} vs {before} (paired, {comparison['num_images']} images):\n"
                      + comparison_table(comparison), flush=True)
        plot_curves(out / "metrics.jsonl", out / "curves.png", base=base.summary if base else None,
                    final=final.summary)
        if base is not None:
            per_prompt = min(4, *(len(seeds) for seeds in base.plan.seeds))  # a row: one prompt's images
            pick = base.plan.image_index(per_prompt=per_prompt, prompts_per_tag=PICTURED["prompts_per_tag"])
            before_after_grid(base.take(pick), final.take(pick), out / "before_after.png", per_prompt=per_prompt)
        return final

    def _sample(self, grid: str = "eval", gather: Callable = ray.get):
        """The evaluation sampler over this run's rollout actors (cluster.evaluation.sample_sharded): each
        actor leaves its images in the object store and returns the kept ones (common/data_plane.py)."""
        def sample(prompts: list[str], seeds: list[list[int]], keep: list[int]) -> SampledImages:
            return sample_sharded(self.rollouts, prompts, seeds, keep,
                                  lambda a, p, s, k: a.evaluate_by_reference.remote(p, s, grid, k), gather)
        return sample

    def _score(self, parts: list[tuple]) -> list[dict[str, ScoreResult]]:
        """Every share to the reward pools by reference (all in flight before the first is gathered)."""
        handles = [self.rewards.submit(*part) for part in parts]
        return [self.rewards.gather(handle).results for handle in handles]

    def evaluate(self, name: str = "eval", split: str = "test") -> Evaluation:
        """Evaluation of the current policy (its EMA weights when learner.ema_decay is set) through the
        rollout actors and the reward pools: `<name>.json`, `<name>_images.jsonl`, `<name>_grid.png`."""
        plan = plan_for(self.cfg, split)
        ema = self.cfg.learner.ema_decay is not None
        # Evaluate the EMA weights, or the trained ones where the actors sample with an EMA sampling
        # policy (DiffusionNFT), then give the actors their sampling weights back.
        swap = ema or self.cfg.learner.old_policy == "ema"
        eval_ref = self.learners[0].export_weights.remote(ema=ema) if swap else None

        def load_evaluation_weights() -> None:  # again after a restart: a restarted actor has the base weights
            for a, actor in enumerate(self.rollouts):
                if swap:
                    call_when_available(lambda actor=actor: actor.load_weights.remote(eval_ref, self.version),
                                        f"evaluation weights for rollout-{a}")
                else:
                    self.sync_weights.resend(actor)

        try:
            if swap:
                load_evaluation_weights()
            return self._evaluate_surviving_restarts(
                plan, self._sample(), folder=self.cfg.logging.output_dir, name=name, grid=True,
                after_restart=load_evaluation_weights)
        finally:
            if swap:
                for actor in self.rollouts:
                    self.sync_weights.resend(actor, restarted=False)

    def _evaluate_surviving_restarts(self, plan: EvalPlan, sample, *, folder, name: str, grid: bool,
                                     after_restart: Callable[[], None]) -> Evaluation:
        """`evaluate`, run again whole (same seeds, so the same images) when a rollout actor dies during
        it: its share and the images it held in the object store died with it. `after_restart` gives the
        actors the weights under evaluation again. Nothing is written until an attempt completes."""
        for _ in range(MAX_ROLLOUT_RETRIES):
            try:
                return evaluate(plan, sample, self._score, output_dir=folder, name=name, grid=grid)
            except (RayActorError, ObjectLostError) as err:
                print(f"[flowray] a rollout actor died during evaluation {name!r} ({type(err).__name__}); waiting "
                      "for its restart and evaluating again", flush=True)
                after_restart()
        return evaluate(plan, sample, self._score, output_dir=folder, name=name, grid=grid)  # the last try raises

    def train_check(self, name: str) -> Evaluation | None:
        """The held-out check on the training prompts (data.eval_train_images_per_tag; None when off)."""
        return self.evaluate(name=name, split="train") if self.cfg.data.eval_train_images_per_tag else None

    def probe(self, name: str, step: int | None = None) -> dict:
        """The training monitor's probe: the fixed probe set sampled with the sampling policy's weights
        on the training grid (ODE), scored into probes/<name>.json; returns probe/* metrics and sends the
        grid to TensorBoard at `step` (the metrics row's iteration; None: not sent)."""
        plan = plan_for(self.cfg, "probe")
        folder = Path(self.cfg.logging.output_dir) / "probes"
        result = self._evaluate_surviving_restarts(
            plan, self._sample(grid="train"), folder=folder, name=name, grid=False,
            after_restart=lambda: [self.sync_weights.resend(actor) for actor in self.rollouts])
        metrics = {f"probe/{k}": v for k, v in result.summary.items() if isinstance(v, float)}
        metrics.update({f"probe/{n}": r["mean"] for n, r in result.summary["rewards"].items()})
        if step is not None:
            pick = plan.image_index(per_prompt=4, prompts_per_tag=1)
            self.logger.log_image("probe/images", image_grid(result.take(pick), columns=4), step)
        return metrics

    def checkpoint(self) -> str:
        staging = checkpoints.staging_dir(self.cfg.logging.output_dir, self.iteration)
        holding = self._holding
        self._hold("learner")  # the optimizer state is saved: bring it back, and put it away again after
        self._call_learners(lambda learner: learner.save_checkpoint.remote(str(staging)))
        if holding == "rollout":
            self._hold("rollout")
        state = {"iteration": self.iteration, "policy_version": self.version, "seed": self.cfg.seed,
                 "config": self.cfg.model_dump(mode="json")}
        path = str(checkpoints.publish(staging, state, self.cfg.logging.keep_checkpoints))
        self._last_checkpoint = self.iteration
        return path

    # ------------------------------------------------------------------ helpers

    def _reward_metrics(self, scored: list[Scored]) -> dict:
        """The iteration's reward metrics (rewards/pool.py names them), the weighted total and, for
        GenEval-style scorers, the accuracy (GenEval's `correct` verdict)."""
        names = [s.name for s in self.cfg.rewards.scorers]
        results = {n: ScoreResult.concat([s.scores[n] for s in scored]) for n in names}
        batch = RewardBatch(results, combine({n: r.reward for n, r in results.items()}, self.cfg.rewards.weights()))
        out = batch.metrics()
        total = batch.combined.reward[batch.combined.valid]
        out["reward/mean"] = float(total.mean()) if total.size else float("nan")
        out["reward/std"] = float(total.std()) if total.size else float("nan")
        correct = [out[k] for k in out if k.endswith("/correct")]
        if correct:
            out["reward/accuracy"] = correct[0]
        tags = [s.result.request.metadata.get("tag") for s in scored]
        out.update(reward_by_tag(batch.combined.reward, tags, [s.result.num_images for s in scored]))
        return out

    def _call_learners(self, call, with_rank: bool = False) -> list:
        refs = [call(lr, r) if with_rank else call(lr) for r, lr in enumerate(self.learners)]
        try:
            return ray.get(refs)
        except RayActorError as err:
            dead = [f"learner-{r}" for r, ref in enumerate(refs) if _failed(ref)]
            raise LearnerRankError(
                f"learner rank died ({', '.join(dead) or 'unknown rank'}): the data-parallel group cannot continue. "
                f"Restart with --resume to continue from the last complete checkpoint under "
                f"{checkpoints.checkpoints_root(self.cfg.logging.output_dir)}"
            ) from err


def _failed(ref) -> bool:
    try:
        ray.get(ref, timeout=0)
        return False
    except RayActorError:
        return True
    except Exception:
        return False
