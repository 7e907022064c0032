"""The driver. One train step reads like the algorithm; these are `_train`'s lines, in order:

    results, pending_rewards = self.rollout(self.schedule.take())  # sample: rollout actors, SDE and log-probs
    scored = self.reward(results, pending_rewards)  # score: reward actors, each group once it is sampled
    groups, adv_metrics = self.advantage(scored)  # advantage: group-relative, per reward group
    learned = self.update(groups, it)  # update: learner ranks, the algorithm's loss with DeepSpeed
    synced = self.sync(self.schedule.in_flight())  # sync: learner rank 0 -> every rollout actor, versioned
    self.logger.log(it, metrics, groups=[s.result.request.group_index for s in scored],  # log

then the periodic evaluation and the checkpoint. The schedule (cluster/scheduling.py: synchronous,
asynchronous with staleness 1, or colocated sides taking turns) submits the next iteration's rollout at
its point of the loop (`self.schedule.reached(...)`) and moves the colocated sides (`self._hold(...)`);
each stage's time is measured around it (`timed`). The stages' pure parts are in cluster/stages.py, the
prompt order in rewards/prompt_order.py, the evaluations in cluster/run_evaluation.py.
Every group's randomness is seeded from (seed, iteration, group), so a group redone after a rollout
actor restart is identical and is counted once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import ray
import yaml
from ray.exceptions import ObjectLostError, RayActorError

from cluster import checkpoints
from cluster.config import ExperimentConfig, resolve
from cluster.evaluation import Evaluation, before_after_picture, compare_evaluations, comparison_table
from cluster.layouts import LAYOUTS
from cluster.metrics import MetricsLogger, progress_line
from cluster.placement import create_placement
from cluster.plots import plot_curves
from cluster.preflight import check_nodes
from cluster.ray_init import require_fit
from cluster.run_evaluation import RunEvaluation
from cluster.scheduling import MAX_ROLLOUT_RETRIES, PendingRollout, Schedule, schedule_for, timed
from cluster.stages import (
    Scored,
    iteration_advantages,
    mean_over_ranks,
    reward_context,
    reward_inputs,
    reward_metrics,
)
from common.actor_metrics import actor_restarts, report_process
from common.durable import CheckpointError
from common.storage import StorageError, remove_sentinel, resolve_output_dir, write_sentinel
from learner.worker import TrainGroup
from models.seeding import derive_seed
from rewards.pool import RewardPools
from rewards.prompt_order import PromptOrder
from rewards.prompts import load_prompts
from rewards.unscored import UnscoredWindow
from rollout.worker import GroupRequest, GroupResult

# A step's times, each measured around its stage (`timed`); time/step runs from the sample to the sync.
STAGE_TIMES = ("time/rollout", "time/reward", "time/update", "time/offload", "time/step")

log = logging.getLogger("flowray")


class LearnerRankError(RuntimeError):
    """A learner rank died: the data-parallel group cannot continue; resume from the last checkpoint."""


class Trainer(RunEvaluation):
    def __init__(self, cfg: ExperimentConfig, *, resume: bool = False):
        # The storage path is resolved once, here on the driver; actors get it absolute (common/storage.py).
        out = resolve_output_dir(cfg.logging.output_dir)
        self.cfg = cfg.model_copy(update={"logging": cfg.logging.model_copy(update={"output_dir": out})})
        self.resume = resume
        self._resume_from: tuple[Path, dict] | None = None  # --resume's checkpoint and state (`open_checkpoint`)
        self.prompts = load_prompts(resolve(cfg.data.train_prompts))
        self.prompt_order = PromptOrder(cfg.data, self.prompts, cfg.prompts_per_iteration, cfg.seed)
        self.iteration = 0  # iterations completed
        self._last_checkpoint = -1  # iteration of the newest checkpoint written by this process
        self.nfe_total = 0  # rollout velocity evaluations so far (this process)
        self.version = 0  # policy version held by the learner
        self.logger: MetricsLogger | None = None
        self.schedule: Schedule | None = None  # cluster/scheduling.py, chosen at setup once the actors exist
        self.layout = LAYOUTS[cfg.cluster.layout]  # cluster/layouts.py: the actors and the weight sync
        self.unscored = UnscoredWindow.from_config(cfg.rewards)  # stops the run past rewards.max_unscored_share
        self._resampled: list[int] = []  # groups sampled again this iteration (metrics.jsonl `groups_resampled`)
        self._latents_for_rewards = cfg.rewards.wants_latents()  # rollout actors put final latents for a scorer

    # ------------------------------------------------------------------ setup / teardown

    def setup(self) -> None:
        c = self.cfg.cluster
        self._resume_from = self.open_checkpoint() if self.resume else None  # before anything touches the run
        require_fit(self.cfg)  # fail now, naming the keys, rather than wait forever for unplaceable actors
        out = Path(self.cfg.logging.output_dir)
        if not self.resume and (archived := checkpoints.archive_previous_run(out)) is not None:
            print(f"[flowray] {out} held an earlier run: moved it to {archived}", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False))
        self.placement = create_placement(c)
        self._check_nodes()
        spans_nodes = self.placement.spans_nodes()  # flowray's groups listen on loopback unless True
        self.learners = self.layout.learners(self.cfg, self.placement)
        master = ray.get(self.learners[0].rendezvous.remote(spans_nodes))
        ray.get([learner.setup.remote(*master) for learner in self.learners])
        self._check_storage()
        self.rollouts = self.layout.rollouts(self.cfg, self.placement, self.learners)
        self.schedule = schedule_for(c, lambda iteration: self.submit_rollout(iteration), self.learners,
                                     self.rollouts)
        self.rewards = RewardPools(self.cfg.rewards)
        self.sync_weights = self.layout.weight_sync(self.cfg, self.learners, self.rollouts, spans_nodes)
        lc = self.cfg.logging
        wandb = {"project": lc.wandb_project, "mode": lc.wandb_mode, "name": self.cfg.name,
                 "config": self.cfg.model_dump(mode="json")} if lc.wandb else None
        tags = tuple(sorted({str(p["tag"]) for p in self.prompts if p.get("tag")}))
        self.logger = MetricsLogger(lc.output_dir, tensorboard=lc.tensorboard, wandb=wandb, accuracy_tags=tags)
        self.logger.restart_source = actor_restarts
        report_process("driver", "driver", lambda: self.version, driver=True)  # its memory on the dashboard
        if self.resume:
            self._restore()
        # Rollout actors initialise their own LoRA adapters; the first sync gives them the learner's.
        self.sync()
        self._hold("rollout")

    def _check_nodes(self) -> None:
        """Every other node of the placement finds the model and scorer weights it will load (its own hub
        cache; cluster/preflight.py `check_nodes`), before any actor starts loading them."""
        nodes = check_nodes(self.cfg, self.placement, skip_driver_node=True)  # launch.py checked this one
        for c in nodes.warnings:
            print(f"[flowray] WARNING {c.key}: {c.message}", flush=True)
        if not nodes.ok:
            raise RuntimeError("; ".join(f"{c.key}: {c.message}" for c in nodes.errors))

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

    def open_checkpoint(self) -> tuple[Path, dict] | None:
        """--resume's checkpoint, checked before any actor starts or any file of the run is written: the
        newest one, its files against its manifest (a damaged one is refused by name), its state and
        seed; warns when this config moves the learning-rate schedule it was trained under. None: none yet."""
        ckpt = checkpoints.latest_checkpoint(self.cfg.logging.output_dir)
        if ckpt is None:
            return None
        checkpoints.verify_checkpoint(ckpt)
        state = checkpoints.read_state(ckpt)
        if state["seed"] != self.cfg.seed:
            raise ValueError(f"checkpoint {ckpt} was made with seed {state['seed']}, the config says {self.cfg.seed}")
        if (change := checkpoints.schedule_change(state, self.cfg)) is not None:
            print(f"[flowray] WARNING: {change}", flush=True)
            log.warning(change)
        return ckpt, state

    def _restore(self) -> None:
        if self._resume_from is None:
            print(f"[flowray] --resume: no complete checkpoint under {self.cfg.logging.output_dir}; starting fresh")
            self.logger.drop_from(0)
            self.logger.count_resume(0, None)
            return
        ckpt, state = self._resume_from
        versions = self._call_learners(lambda learner: learner.load_checkpoint.remote(str(ckpt)))
        self.iteration, self.version = int(state["iteration"]), int(versions[0])
        self.logger.drop_from(self.iteration)  # rows a crashed run logged after its last checkpoint
        self.logger.count_resume(self.iteration, str(ckpt))
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
        for actor in {id(a): a for a in getattr(self, "rollouts", []) + getattr(self, "learners", [])}.values():
            ray.kill(actor, no_restart=True)  # once each: a hybrid worker is both
        if hasattr(self, "placement"):
            self.placement.remove()

    # ------------------------------------------------------------------ the stages

    def requests(self, iteration: int) -> list[GroupRequest]:
        """The iteration's groups: the prompts of the run's order (rewards/prompt_order.py), one per group,
        each seeded by (seed, iteration, group)."""
        return [
            GroupRequest(g, self.prompts[i]["prompt"], self.prompts[i], derive_seed(self.cfg.seed, "group", iteration, g), iteration,
                         with_latents=self._latents_for_rewards)
            for g, i in enumerate(self.prompt_order.indices(iteration))
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
            except RayActorError as err:
                if not self.layout.rollouts_restart:  # hybrid: the actor was a learner rank too
                    raise LearnerRankError(f"hybrid-{a} died while sampling: the data-parallel "
                                           "group cannot continue. Restart with --resume to continue from the last "
                                           "complete checkpoint") from err
                retries[a] += 1
                if retries[a] > MAX_ROLLOUT_RETRIES:
                    raise
                finished = sorted(pending.by_actor[a] & done.keys())  # their images and latents are gone too
                lost = pending.drop_actor(a) + [req] + [done.pop(g)[0].request for g in finished]
                self._resampled += [r.group_index for r in lost]
                print(f"[flowray] rollout-{a} died; waiting for its restart and resampling its {len(lost)} groups",
                      flush=True)
                self.sync_weights.resend(self.rollouts[a])
                for r in sorted(lost, key=lambda r: r.group_index):
                    pending.add(self.rollouts, a, r)
                continue
            done[req.group_index] = (res, self.rewards.submit(*reward_inputs(res), **self._reward_context(res)))
        order = sorted(done)
        return [done[g][0] for g in order], {"handles": [done[g][1] for g in order]}

    def reward(self, results: list[GroupResult], pending_rewards: dict) -> list[Scored]:
        scored = []
        for res, handle in zip(results, pending_rewards["handles"], strict=True):
            try:
                scores = self.rewards.gather(handle).results
            except ObjectLostError:  # its rollout actor died after returning it: the images went with it
                res = self._resample(res.request)
                scores = self.rewards.score(*reward_inputs(res), **self._reward_context(res)).results
            scored.append(Scored(res, scores))
        self.unscored.observe({name: [s.scores[name] for s in scored] for name in self.rewards.pools})
        return scored

    def _reward_context(self, res: GroupResult) -> dict:
        """Group ids, progress and latents for the scorers that declare them (cluster/stages.py)."""
        return reward_context(res, self.cfg.iterations)

    def _resample(self, request: GroupRequest) -> GroupResult:
        """Sample a group again (same seed) on its actor once Ray has restarted it."""
        a = self._actor_of(request)
        self._resampled.append(request.group_index)
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
        offloading the other side first (common/offload.py, cluster/scheduling.py), so a bundle never holds
        both; returns the seconds it took (0 when off or already so)."""
        return self.schedule.hold(side)

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
        except (LearnerRankError, CheckpointError):  # a checkpoint written now would fail alike
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
        wall_start, evaluating = time.perf_counter(), {"seconds": 0.0}  # evaluations inside the loop
        self.schedule.start(start_it, cfg.iterations)
        for it in range(start_it, cfg.iterations):
            times = dict.fromkeys(STAGE_TIMES, 0.0)
            with timed(times, "time/step"):
                with timed(times, "time/rollout"):
                    results, pending_rewards = self.rollout(self.schedule.take())  # sample: rollout actors, SDE and log-probs
                times["time/offload"] += self._hold("learner")  # colocated: rollout weights out, learner state back
                self.schedule.reached("rollout", it)  # asynchronous: the next rollout, with these weights (staleness 1)
                with timed(times, "time/reward"):
                    scored = self.reward(results, pending_rewards)  # score: reward actors, each group once it is sampled
                with timed(times, "time/update"):
                    groups, adv_metrics = self.advantage(scored)  # advantage: group-relative, per reward group
                    learned = self.update(groups, it)  # update: learner ranks, the algorithm's loss with DeepSpeed
                times["time/offload"] += self._hold("rollout")  # learner state out (its trainable weights stay for the sync)
                synced = self.sync(self.schedule.in_flight())  # sync: learner rank 0 -> every rollout actor, versioned
            probed = {}
            if probe_every and (it + 1) % probe_every == 0:  # before the next rollout takes the actors
                with timed(probed, "time/probe"):
                    probed.update(self.probe(f"probe_{it + 1:06d}", step=it))
                evaluating["seconds"] += probed["time/probe"]
            self.schedule.reached("sync", it)  # synchronous: the next rollout overlaps evaluation and checkpointing
            self.iteration = it + 1
            metrics = self._metrics(scored, {**adv_metrics, **learned, **synced, **probed, **times},
                                    training_seconds=time.perf_counter() - wall_start - evaluating["seconds"])
            stopping = stop is not None and stop(metrics) and it + 1 < cfg.iterations
            periodic = cfg.logging.eval_every and (it + 1) % cfg.logging.eval_every == 0
            wanted = periodic or (evaluate_when is not None and evaluate_when(metrics))
            # The last iteration (or the one a budget stops at) is evaluated by run(), not twice.
            if wanted and it + 1 < cfg.iterations and not stopping:
                with timed(evaluating, "seconds"):
                    summary = self.evaluate(name=f"eval_iter{it + 1:06d}").summary
                metrics.update({f"eval/{k}": v for k, v in summary.items() if isinstance(v, float)})
            self.logger.log(it, metrics, groups=[s.result.request.group_index for s in scored],  # log
                            policy_versions=[s.result.policy_version for s in scored],
                            groups_resampled=sorted(self._resampled))
            self._resampled = []
            if (it + 1) % cfg.logging.log_every == 0 or it + 1 == cfg.iterations:
                print(progress_line(it + 1, cfg.iterations, metrics, self.logger.seconds_per_iteration()), flush=True)
            every = cfg.logging.checkpoint_every
            if (every and (it + 1) % every == 0) or it + 1 == cfg.iterations:
                self.checkpoint()
            self.schedule.reached("checkpoint", it, stopping)  # colocated: once the checkpoint's learner turn is over
            last = metrics
            if stopping:
                if self._last_checkpoint != self.iteration:
                    self.checkpoint()
                break
        return last

    def _metrics(self, scored: list[Scored], stages: dict, training_seconds: float) -> dict:
        """An iteration's metrics row: the rewards, the stages' metrics and times, and the throughputs;
        `training_seconds` is the wall time without the evaluations inside the loop (budgets compare training)."""
        metrics = {
            **reward_metrics(scored, self.cfg), **self.unscored.shares(), **stages,
            "charts/images_per_s": sum(s.result.num_images for s in scored)
            / max(stages["time/rollout"] + stages["time/reward"], 1e-9),
            "charts/transitions_per_s": stages.get("learner/transitions", 0.0) * len(self.learners)
            / max(stages.get("learner/seconds", 1e-9), 1e-9),
            "charts/nfe_per_group": float(np.mean([s.result.rollout.nfe for s in scored])),
            "charts/wall_seconds": training_seconds,
        }  # fmt: skip
        self.nfe_total += sum(s.result.rollout.nfe for s in scored)
        metrics["charts/nfe_total"] = float(self.nfe_total)
        return {**metrics, **self._fault_counts()}

    def _fault_counts(self) -> dict:
        """What this driver has recovered from so far: Ray's restarts of its actors (also exported per actor,
        `flowray_actor_restarts`) and the reward pools' resubmitted requests and ignored duplicate answers."""
        restarts = actor_restarts()
        self.logger.set_actor_restarts(restarts)
        return {"charts/actor_restarts": float(sum(restarts.values())), **self.rewards.counters()}

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
            before_after_picture(base, final, out / "before_after.png")
        return final

    def checkpoint(self) -> str:
        """Write checkpoint `iteration` (cluster/checkpoints.py `write_checkpoint`: staged, fsynced, with a
        manifest, renamed into place). A failed write raises CheckpointError naming the path and cause."""
        holding = self.schedule.resident
        self._hold("learner")  # the optimizer state is saved: bring it back, and put it away again after

        def save(staging: Path) -> list[dict]:
            try:
                files = self._call_learners(lambda learner: learner.save_checkpoint.remote(str(staging)))
            except CheckpointError as err:  # the rank's own message, not Ray's wrapping of it
                raise getattr(err, "cause", err) from None
            if holding == "rollout":
                self._hold("rollout")
            return files

        path = str(checkpoints.write_checkpoint(self.cfg.logging.output_dir, self.iteration, save, self.state(),
                                                self.cfg.logging.keep_checkpoints))
        self._last_checkpoint = self.iteration
        return path

    def state(self) -> dict:
        """What a checkpoint's trainer_state.json records of the driver."""
        return {"iteration": self.iteration, "policy_version": self.version, "seed": self.cfg.seed,
                "config": self.cfg.model_dump(mode="json")}

    # ------------------------------------------------------------------ helpers

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
