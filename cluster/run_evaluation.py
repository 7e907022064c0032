"""Evaluations of a run (cluster/evaluation.py does the planning, scoring and files):
- through the driver's actors (cluster/trainer.py's `Trainer` takes the methods of `RunEvaluation`): the
  test and training-prompt evaluations and the training monitor's probe, sampled by the rollout actors and
  scored by the reward pools, each run again whole when a rollout actor dies during it;
- in process (`evaluate_in_process`): the same evaluation without Ray, for `launch.py eval` and the model card."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import ray
from ray.exceptions import ObjectLostError, RayActorError

from cluster.evaluation import (
    EvalPlan,
    Evaluation,
    SampledImages,
    eval_progress,
    evaluate,
    plan_for,
    sample_sharded,
)
from cluster.scheduling import MAX_ROLLOUT_RETRIES
from common.actor_calls import call_when_available
from rewards.base import ScoreResult


class RunEvaluation:
    """Evaluation methods of a run; they read the Trainer's cfg, rollouts, learners, rewards, version,
    sync_weights and logger."""

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
        swap = ema or self.cfg.algorithm.sampling_policy_is_separate
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
        grid to TensorBoard at `step` (the metrics row's iteration; None: not sent), a video family's also as an
        animated GIF (probe/videos)."""
        plan = plan_for(self.cfg, "probe")
        folder = Path(self.cfg.logging.output_dir) / "probes"
        result = self._evaluate_surviving_restarts(
            plan, self._sample(grid="train"), folder=folder, name=name, grid=False,
            after_restart=lambda: [self.sync_weights.resend(actor) for actor in self.rollouts])
        metrics = {f"probe/{k}": v for k, v in result.summary.items() if isinstance(v, float)}
        metrics.update({f"probe/{n}": r["mean"] for n, r in result.summary["rewards"].items()})
        if step is not None:
            pick = plan.image_index(per_prompt=4, prompts_per_tag=1)
            self.logger.log_image("probe/images", result.picture(pick, columns=4), step)
            if result.is_video:  # the same picture, moving
                self.logger.log_video("probe/videos", result.animation(pick, columns=4), step)
        return metrics


def evaluate_in_process(cfg, *, output_dir: str | Path, split: str = "test", name: str = "eval",
                        weights: dict | None = None) -> Evaluation:
    """The trainer's evaluation without Ray: one in-process rollout worker (on a GPU when this process
    sees one) and the config's scorers, through the same plan, `sample_sharded` and `evaluate`
    (`launch.py eval`, the model card). `weights`: trainable weights to load first (a checkpoint's)."""
    from common.data_plane import EvalShare
    from models.sampling import eval_batches
    from rewards.base import build_scorers
    from rollout.worker import RolloutWorker

    plan = plan_for(cfg, split)  # before loading anything: a plan too small for its targets fails here
    c = cfg.cluster
    worker = RolloutWorker(cfg.model, cfg.sampling, algorithm=cfg.algorithm, name="eval", device="auto",
                           precision=cfg.learner.precision, rows_per_forward=c.rollout_rows_per_forward,
                           images_per_decode=c.rollout_images_per_decode)
    if weights is not None:
        worker.load_weights(weights, version=0)
    scorers = build_scorers(cfg.rewards.scorers)
    progress = eval_progress(name, plan)

    def every_image(w, prompts: list[str], seeds: list[list[int]]) -> EvalShare:
        """All images, kept (in process all are at hand: failure grids), asked for in the batches the worker
        samples together anyway (the same images), to count them as they come."""
        out = []
        for batch in eval_batches([len(s) for s in seeds], cfg.algorithm.rollout_latents_per_call(cfg.sampling)):
            out.append(w.evaluate([prompts[i] for i in batch], [seeds[i] for i in batch]))
            progress.update(sum(map(len, out)))
        return EvalShare.of(np.concatenate(out), range(sum(map(len, out))))

    def sample(prompts: list[str], seeds: list[list[int]], keep: list[int]) -> SampledImages:
        return sample_sharded([worker], prompts, seeds, keep, lambda w, p, s, _: every_image(w, p, s))

    def score(parts: list[tuple]) -> list[dict[str, ScoreResult]]:
        return [{n: scorer(*part) for n, scorer in scorers.items()} for part in parts]

    return evaluate(plan, sample, score, output_dir=output_dir, name=name, progress=progress)
