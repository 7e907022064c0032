"""What an algorithm unit is, and the registry that lists them.

An algorithm (Flow-GRPO, DanceGRPO, ..., DiffusionNFT, AWM) is one class: a pydantic config section (the
`algorithm:` block of a preset, selected by its `name`) that also carries the algorithm's behaviour, as
Ray RLlib's PPOConfig owns its defaults and its `validate()`. A unit owns:
- its settings and their validation (`check` sees the whole experiment config for cross-section rules);
- its sampling strategy (`sample`: one prompt group -> `Rollout`, models/sampling.py has the machinery);
- its loss (`loss`, one call signature per family: algorithms/per_step.py, algorithms/forward_process.py);
- its advantage estimator, by registered name (learner/advantages.py);
- its row counts and memory terms for the planner (cluster/memory_plan.py asks, never tests a name).

The registry is the only list of algorithms: the experiment config's `algorithm` field is the union of
the registered classes, and nothing outside a unit compares an algorithm's name.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

ALGORITHMS: dict[str, type[Algorithm]] = {}


def register_algorithm(cls: type[Algorithm]) -> type[Algorithm]:
    """Register a unit under the default of its `name` field (a Literal of its own name)."""
    name = cls.model_fields["name"].default
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a `name: Literal['...'] = '...'` field")
    if name in ALGORITHMS:
        raise ValueError(f"algorithm {name!r} is already registered")
    ALGORITHMS[name] = cls
    return cls


# The algorithm of a config that names none, and of a worker built without one (tests, benchmarks).
DEFAULT_ALGORITHM = "flow_grpo"


def unregistered(name: str) -> str:
    """The error text for an algorithm name the registry does not hold."""
    return f"{name!r} is not registered; choose one of {sorted(ALGORITHMS)}"


def algorithm_class(name: str) -> type[Algorithm]:
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm.name {unregistered(name)}")
    return ALGORITHMS[name]


def default_algorithm() -> Algorithm:
    """`DEFAULT_ALGORITHM` with its defaults."""
    return ALGORITHMS[DEFAULT_ALGORITHM]()


class Algorithm(BaseModel):
    """The base of every unit. Subclasses are the families' bases, then one class per algorithm."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str

    # The learner's training plan for this family (learner/ PLANS: how micro-batches are built and fed).
    learner_plan: ClassVar[str] = ""
    # The loss trains the sampler's own denoising steps as a policy (per-step log-probs): a step-distilled model,
    # whose few steps are no SDE's, is refused unless model.allow_step_distilled (cluster/config.py).
    trains_sampling_steps: ClassVar[bool] = False
    # The advantage estimator, by its name in learner/advantages.py's registry (a unit whose settings choose
    # it overrides this with a property, as ELBO-PG's `advantage`).
    advantage_estimator: ClassVar[str] = "grpo"
    # sampling.same_latent null: whether a group shares one initial noise (the paper's default).
    default_same_latent: ClassVar[bool] = False
    # The keys of the config layout before the `algorithm` section (sampling.strategy / learner.loss) that
    # became this unit's fields: old dotted key -> field (cluster/config_migration.py).
    legacy_keys: ClassVar[dict[str, str]] = {}
    # False for units added with the `algorithm` section: no old layout names them, so the migration ignores
    # them (and the legacy_keys and legacy_selector they inherit from their family's base).
    legacy_layout: ClassVar[bool] = True

    # ---- configuration

    def check(self, cfg: Any) -> None:
        """Cross-section validation against the whole experiment config; raise ValueError naming the keys."""

    @classmethod
    def legacy_selector(cls) -> dict[str, str]:
        """The old layout's `sampling.strategy` and `learner.loss` that named this algorithm."""
        raise NotImplementedError

    def same_latent(self, sampling) -> bool:
        return self.default_same_latent if sampling.same_latent is None else bool(sampling.same_latent)

    # ---- sampling

    def sample(self, sampling, velocity, init_noise, sigmas, generator, iteration):
        raise NotImplementedError

    @property
    def sampling_policy_is_separate(self) -> bool:
        """True when rollouts sample with a policy other than the trained weights (DiffusionNFT's EMA):
        evaluation then loads the trained weights and gives the sampling policy back after."""
        return False

    # ---- planner terms (cluster/memory_plan.py)

    def images_per_group(self, group_size: int) -> int:
        """Images one prompt group decodes and scores."""
        return group_size

    def rollout_latents_per_call(self, sampling) -> int:
        """Latents of the largest transformer call while sampling one group."""
        return sampling.group_size

    def learner_inputs_per_micro_batch(self, micro_batch_size: int, group_size: int) -> int:
        """Distinct latents one learner forward takes."""
        return micro_batch_size

    def learner_device_terms(self, trainable: int) -> list[tuple[str, float, tuple[str, ...]]]:
        """Extra device memory of a learner rank: (label, bytes, config keys that change it)."""
        return []

    # ---- cost terms (cluster/cost_model.py)

    def learner_items(self, record) -> int:
        """Inputs one sampled group gives the learner (each trained once per inner epoch)."""
        raise NotImplementedError

    def needs_reference(self, learner) -> bool:
        """Whether the learner evaluates the reference (base) policy: for the KL term when learner.beta > 0
        (a unit whose loss itself compares with the base says so whatever the KL weight)."""
        return learner.beta > 0

    def learner_frozen_forwards(self, learner) -> tuple[str, ...]:
        """The forwards without gradients the learner runs beside each trained one (the reference policy, the
        old policy, ...), by name."""
        return ("reference",) if self.needs_reference(learner) else ()

