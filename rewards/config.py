"""Config section owned by rewards/: which scorers run, on how many actors, and how rewards combine.

cluster/config.py composes it into the experiment config as `rewards`; the reward pool imports only
this module. Every field has a description.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rewards.base import BUILTIN_SCORERS


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ScorerConfig(_Section):
    """One reward model served by its own pool of reward actors."""

    name: str = Field(description=f"Registered scorer name; built-ins: {', '.join(sorted(BUILTIN_SCORERS))}.")
    weight: float = Field(
        1.0, ge=0.0, description="Weight of this reward: in the weighted sum (weighted_sum) or on its advantage (advantage_sum)."
    )
    model: str | None = Field(
        None,
        description="Local folder or hub id of the scorer's main weights (pickscore/clipscore: the CLIPModel; geneval: "
        "the Mask2Former detector; vlm_judge/soft_tifa: the image-text-to-text judge, Qwen/Qwen2.5-VL-7B-Instruct by "
        "default; pairwise_pickscore: the CLIPModel judge; hpsv3: the Qwen2-VL backbone, its reward head in "
        "options.checkpoint; unified_reward/unified_reward_pairwise: the UnifiedReward judge, "
        "CodeGoat24/UnifiedReward-2.0-qwen-7b by default). None: the scorer's default hub id. Unused by ocr and "
        "shapes_geneval.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra keyword options of the scorer's constructor (e.g. geneval: {clip: ..., reward: strict}; "
        "pickscore: {processor: ...}; shapes_geneval: {reward: partial}; remote: {url: 'http://127.0.0.1:8790', "
        "token_file: ...}; openai_judge: {served_model: ..., url: 'http://127.0.0.1:8000/v1', template: ...}; vlm_judge: "
        "{template: ..., answer: yes_no|score, dtype: bfloat16, batch_size: 8, cache_size: 4096}; soft_tifa: "
        "{require_questions: true, dtype: bfloat16, batch_size: 8}; hpsv3: {checkpoint: MizzenAI/HPSv3/HPSv3.safetensors, "
        "pixels: 200704}; unified_reward_pairwise: {choices: [Image 1 is better, Image 2 is better]}; docs/rewards.md "
        "lists every option).",
    )
    batch_size_per_request: int = Field(
        16, ge=1, description="Most images in one request to a reward actor; bigger submissions are split (speed only)."
    )
    actors: int = Field(1, ge=1, description="Number of reward actors for this scorer (speed only).")
    num_cpus_per_actor: float = Field(
        1.0, gt=0, description="CPUs Ray reserves per actor; the scorer's torch / onnxruntime thread pool gets "
        "max(1, floor(num_cpus_per_actor)) threads."
    )
    num_gpus_per_actor: float = Field(
        0.0, ge=0, description="GPUs Ray reserves per actor. A fraction (e.g. 0.25) lets several small reward models "
        "share one GPU; `launch.py --dry-run` checks the scorer's memory against that share of cluster.gpu_memory_gb."
    )
    timeout_s: float = Field(
        300.0, gt=0, description="Seconds one request may take on its actor (from the moment the actor could start it) "
        "before its images are left unscored (never a reward of 0) and the hung actor is restarted; remote scorers "
        "time out their own HTTP calls first (their options timeout_s, retries)."
    )
    max_restarts: int = Field(
        -1, ge=-1, description="How often Ray restarts a dead reward actor over the run (Ray's max_restarts); -1, the "
        "default, is without limit, as a run of days outlives any fixed budget. A crash loop still stops the run: each "
        "request is resubmitted once, and a request whose actor dies again fails the run."
    )

    @field_validator("name")
    @classmethod
    def _known_name(cls, name: str) -> str:
        from rewards.base import known_scorers

        if name not in known_scorers():
            raise ValueError(f"unknown scorer {name!r}; known scorers: {', '.join(known_scorers())}")
        return name

    def inputs(self) -> dict[str, bool]:
        """The extra inputs the scorer's class declares (rewards/base.py `scorer_inputs`): groupwise,
        wants_progress, wants_latents."""
        from rewards.base import scorer_factory, scorer_inputs

        return scorer_inputs(scorer_factory(self.name))

    def scorer_options(self) -> dict[str, Any]:
        """Constructor keyword options: `options`, plus `model` and the thread count where the scorer takes them."""
        import inspect

        from rewards.base import scorer_factory

        accepted = inspect.signature(scorer_factory(self.name)).parameters
        options = dict(self.options)
        model_key = "detector" if "detector" in accepted else "model"
        if self.model is not None:
            options[model_key] = self.model
        if "num_threads" in accepted:
            options.setdefault("num_threads", max(1, int(self.num_cpus_per_actor)))
        if "device" in accepted and self.num_gpus_per_actor == 0:
            options.setdefault("device", "cpu")
        return options

    @field_validator("num_gpus_per_actor")
    @classmethod
    def _whole_above_one(cls, gpus: float) -> float:
        if gpus > 1 and gpus != int(gpus):
            # Ray places a fraction within one GPU only: above 1 a reservation must be whole GPUs.
            raise ValueError(f"num_gpus_per_actor {gpus} must be at most 1 or a whole number of GPUs (Ray's rule)")
        return gpus

    @model_validator(mode="after")
    def _options_fit(self) -> ScorerConfig:
        from rewards.base import check_scorer_options, scorer_factory

        if self.model is not None:
            import inspect

            accepted = inspect.signature(scorer_factory(self.name)).parameters
            if "model" not in accepted and "detector" not in accepted:
                raise ValueError(f"model: scorer {self.name!r} loads no weights; remove `model`")
            if "model" in self.options or "detector" in self.options:
                raise ValueError(f"options: set the weights once, in `model`, not also in options for scorer {self.name!r}")
        try:
            check_scorer_options(self.name, self.scorer_options())
        except TypeError as err:
            raise ValueError(f"options: {err}") from None
        return self


class RewardsConfig(_Section):
    """Reward models, their actor pools, and how several rewards become one training signal."""

    scorers: list[ScorerConfig] = Field(
        default_factory=lambda: [ScorerConfig(name="shapes_geneval")],
        description="Reward models; each gets its own pool of reward actors.",
    )
    combination: Literal["weighted_sum", "advantage_sum"] = Field(
        "weighted_sum",
        description="'weighted_sum': one reward = sum_i w_i r_i, then advantages (Flow-GRPO); 'advantage_sum': "
        "advantages per reward, then sum_i w_i A_i (DanceGRPO, MixGRPO, G2RPO).",
    )
    nan_policy: Literal["mask", "fail"] = Field(
        "mask",
        description="NaN/inf numbers a scorer returns as scores: 'mask' leaves those images unscored (reward NaN, "
        "scored=False) and counts them; 'fail' raises at once, naming the scorer and prompt.",
    )
    max_unscored_share: float = Field(
        0.1, ge=0.0, le=1.0,
        description="Stop the run, naming the scorer, when the share of its images left unscored (the scorer raised, "
        "timed out or answered malformed; never trained as rewards) over the last `unscored_window` iterations "
        "exceeds this. Failures are rarely random (a judge times out on busy images), so a large share biases the "
        "groups' statistics; 0.1 tolerates one fully failed iteration in ten. Watches (weight 0) are counted, never "
        "stopped on. 1.0: never stop.",
    )
    unscored_window: int = Field(
        10, ge=1,
        description="Iterations over which max_unscored_share is measured (fewer at the start of a run, so a service "
        "that is down stops the run after its first iteration).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> RewardsConfig:
        if not self.scorers:
            raise ValueError("scorers: at least one reward model is required")
        names = [s.name for s in self.scorers]
        for i, name in enumerate(names):
            if names.index(name) != i:
                raise ValueError(f"scorers[{i}].name: scorer {name!r} appears twice; each reward model is listed once")
        if sum(s.weight for s in self.scorers) <= 0:
            raise ValueError("scorers[*].weight: all weights are 0, so there is no training signal; give one a weight > 0")
        return self

    def weights(self) -> dict[str, float]:
        """Scorer name -> weight, in config order."""
        return {s.name: s.weight for s in self.scorers}

    def wants_latents(self) -> bool:
        """Whether some scorer declares `wants_latents`: only then do rollout actors put each group's final
        latents in the object store for the reward actors (they are large)."""
        return any(s.inputs()["wants_latents"] for s in self.scorers)
