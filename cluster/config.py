"""The experiment config: each package's section composed into one validated, documented schema.

Load with `load_config(path, overrides)`: a YAML file (or the default preset) plus dotted
`key=value` overrides such as `learner.learning_rate=1e-4`. Sizes that define the algorithm are
global (`data.images_per_iteration`); sizes that only change speed name their scope.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from algorithms import ALGORITHMS, default_algorithm, unregistered
from cluster.config_migration import migrate
from learner.config import LearnerConfig
from models.config import ModelConfig, SamplingConfig
from models.families import family_of
from rewards.config import RewardsConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
# The main job (README's first command): the algorithm that trains the embedded default best on 2 CPU
# cores (docs/results.md). The Flow-GRPO family's presets are configs/shapes_{flowgrpo,...}.yaml.
DEFAULT_PRESET = REPO_ROOT / "configs" / "shapes_nft.yaml"


def resolve(path: str) -> str:
    """A repo-relative data path (prompt files, the shipped model) as an absolute one when it exists
    under the repo, so runs started from any directory find them; other paths pass through."""
    p = REPO_ROOT / path
    return str(p) if not path.startswith("/") and p.exists() else path


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Prompts and how many images one iteration samples."""

    train_prompts: str = Field(
        "assets/prompts/shapes_train.jsonl", description="Training prompt file (GenEval metadata JSONL)."
    )
    test_prompts: str = Field(
        "assets/prompts/shapes_test.jsonl", description="Evaluation prompt file (GenEval metadata JSONL)."
    )
    images_per_iteration: int = Field(
        64, ge=2, description="Global images sampled per iteration (prompts per iteration x sampling.group_size)."
    )
    prompt_order: Literal["epochs", "tag_balanced"] = Field(
        "epochs",
        description="Which training prompts an iteration samples. 'epochs': seeded permutations of the whole file. "
        "'tag_balanced': tags take turns (each record needs a 'tag'), each tag walking its own permutations, so a "
        "task with few prompts is trained as often as one with many (the evaluation averages over tags).",
    )
    tag_weights: dict[str, int] = Field(
        {},
        description="With prompt_order 'tag_balanced': turns per round of each named tag (an integer >= 1; tags not "
        "named take 1), e.g. {position: 2} trains position prompts twice as often as each other tag. Spend rollouts "
        "where groups still disagree: a tag the policy already solves gives groups of equal rewards, hence no "
        "advantage and no gradient.",
    )
    mirror_position_prompts: bool = Field(
        False,
        description="With prompt_order 'tag_balanced': every turn that draws a relation prompt ('a circle left of a "
        "square') also draws a training prompt of the same two objects in the opposite layout ('a square left of a "
        "circle') into the same iteration, so the turn takes two prompt slots. A binary reward pays one fixed layout "
        "per object pair on half of that pair's prompts whatever they say; side by side, the pushes toward either "
        "layout cancel and what is left depends on the relation word.",
    )
    mirror_binding_prompts: bool = Field(
        False,
        description="With prompt_order 'tag_balanced': every turn that draws a colour-binding prompt ('a red circle "
        "and a blue square') also draws the training prompt of the same two objects with the colours exchanged ('a "
        "blue circle and a red square') into the same iteration, as mirror_position_prompts does for relations: a "
        "policy that draws one binding per object pair whatever the prompt says is paid on one of the two and "
        "penalised on the other.",
    )
    eval_num_prompts: int | None = Field(None, ge=1, description="Evaluate on the first N test prompts (None: all).")
    eval_images_per_prompt: int = Field(
        1, ge=1, description="Images per test prompt at evaluation (when data.eval_images_per_tag is unset or the "
        "prompts carry no tag)."
    )
    eval_images_per_tag: int | None = Field(
        None, ge=1,
        description="Balanced evaluation of tagged (GenEval) prompts: about this many images per tag, split evenly "
        "over the tag's prompts (ceil(N / prompts of the tag) each), so a tag with one prompt weighs as much as one "
        "with 24. None: data.eval_images_per_prompt for every prompt.",
    )
    eval_seed: int = Field(
        1234, description="Seed of the evaluation noise: image j of prompt i starts from seed (eval_seed, split, i, j), "
        "so every evaluation with the same prompts and counts is paired image by image with every other."
    )
    eval_max_halfwidth: float | None = Field(
        None, gt=0, lt=1,
        description="Refuse (at setup and --dry-run) an evaluation whose image counts cannot give every tag's accuracy "
        "a 95% interval of at most +-this (binomial worst case, p = 1/2). None: no check.",
    )
    eval_max_halfwidth_overall: float | None = Field(
        None, gt=0, lt=1, description="The same check for `overall` (GenEval's mean over tags)."
    )
    eval_train_images_per_tag: int = Field(
        0, ge=0,
        description="Held-out check on the training prompts: images per tag sampled from them with evaluation seeds "
        "(never the training seeds) at the base and final evaluations, so 'learned the training prompts' can be told "
        "from 'generalised'. 0: off.",
    )

    @model_validator(mode="after")
    def _check_tag_weights(self) -> DataConfig:
        if self.tag_weights and self.prompt_order != "tag_balanced":
            raise ValueError("data.tag_weights needs data.prompt_order='tag_balanced' (epochs have no tag turns)")
        for name in ("mirror_position_prompts", "mirror_binding_prompts"):
            if getattr(self, name) and self.prompt_order != "tag_balanced":
                raise ValueError(f"data.{name} needs data.prompt_order='tag_balanced'")
        for tag, weight in self.tag_weights.items():
            if weight < 1:
                raise ValueError(f"data.tag_weights.{tag} must be >= 1 (got {weight})")
        return self


# cluster.layout -> whether its rollout actors are processes of their own, with their own resources
# (cluster/layouts.py; in 'hybrid' the learner ranks sample).
SEPARATE_ROLLOUT_ACTORS = {"split": True, "hybrid": False}


class ClusterConfig(_Section):
    """Where the actors run. Counts and resources here change speed, never the algorithm."""

    address: str | None = Field(
        None, description="Ray address; None starts a local single-node Ray (or uses RAY_ADDRESS if set)."
    )
    layout: Literal[tuple(SEPARATE_ROLLOUT_ACTORS)] = Field(
        "split",
        description="'split': rollout actors and learner ranks are separate actors (own bundles, or shared ones with "
        "cluster.colocate), weights synced from learner rank 0 after every update. 'hybrid': one worker per learner "
        "rank holds the policy once, samples with the live weights and trains them (flow_grpo's layout: every GPU "
        "samples and trains, the sync is a no-op); cluster.num_rollout_actors must equal cluster.num_learner_ranks, "
        "and the worker takes the learner_* resources (rollout_num_gpus/_num_cpus and sync_backend are split-only).",
    )
    num_rollout_actors: int = Field(1, ge=1, description="Rollout actors (each holds a copy of the policy).")
    rollout_num_gpus: float = Field(0.0, ge=0, description="GPUs per rollout actor.")
    rollout_num_cpus: float = Field(1.0, gt=0, description="CPUs per rollout actor.")
    num_learner_ranks: int = Field(1, ge=1, description="Data-parallel DeepSpeed learner ranks (Ray actors).")
    learner_num_gpus: float = Field(0.0, ge=0, description="GPUs per learner rank.")
    learner_num_cpus: float = Field(1.0, gt=0, description="CPUs per learner rank.")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement-group strategy for the rollout and learner bundles."
    )
    colocate: bool = Field(False, description="Place rollout actors in the learner ranks' bundles (share GPUs).")
    colocate_offload: bool = Field(
        False,
        description="With cluster.colocate: the idle side of each shared bundle moves its tensors out (rollout actors: "
        "their pipeline's weights while the learner trains; learner ranks: optimizer state, gradients and frozen "
        "networks while the rollout actors sample) to pinned host memory on GPU, to a spill file on CPU "
        "(common/offload.py). Same results bit for bit; the bundle holds one side at a time.",
    )
    sync_backend: Literal["object_store", "collective"] = Field(
        "object_store", description="Weight sync: Ray object store, or a gloo/NCCL collective group."
    )
    async_mode: bool = Field(False, description="Overlap sampling of step k+1 with the update of step k.")
    max_staleness: int = Field(1, ge=0, description="Async mode: max policy versions a rollout may lag behind.")
    torch_threads_per_actor: int = Field(1, ge=1, description="torch.set_num_threads inside each actor.")
    learner_torch_threads: int | None = Field(
        None,
        ge=1,
        description="torch.set_num_threads inside each learner rank; None: torch_threads_per_actor. On CPU with "
        "synchronous sampling the rollout actors idle while the learner trains, so the learner can use their cores.",
    )
    rollout_rows_per_forward: int | None = Field(
        None,
        ge=1,
        description="Rollout actors: at most this many rows per transformer call (CFG's two halves count as rows; "
        "G2RPO batches up to G * |M| + 1 rows per step). Memory only, same results; None: one call.",
    )
    rollout_images_per_decode: int | None = Field(
        None, ge=1, description="Rollout actors: at most this many images per VAE decode. Memory only; None: one call."
    )
    gpu_memory_gb: float = Field(
        80.0, gt=0,
        description="Memory of one GPU in GB (1e9 bytes) that the memory planner (`launch.py --dry-run`, "
        "cluster/memory_plan.py) checks each actor's estimate against, times its GPU share.",
    )
    dashboard_host: str = Field(
        "127.0.0.1", description="Ray dashboard bind address for a local Ray (loopback by default; the dashboard runs code)."
    )
    include_dashboard: bool = Field(True, description="Start the Ray dashboard with a local Ray.")

    @property
    def rollout_processes(self) -> int:
        """Rollout actors that are processes of their own, reserving rollout_num_cpus/_gpus each (0 where
        the layout's learner ranks sample)."""
        return self.num_rollout_actors if SEPARATE_ROLLOUT_ACTORS[self.layout] else 0


class LoggingConfig(_Section):
    """Outputs, checkpoints and evaluation cadence."""

    output_dir: str = Field(
        "outputs/run",
        description="Run directory and storage path: metrics.jsonl, eval.json, checkpoints/, images. Resolved once "
        "on the driver; multi-node runs need a path on a shared filesystem (checked at start-up). A relative path "
        "under `ray job submit --working-dir` goes under ~/flowray_results/ on the driver's node.",
    )
    log_every: int = Field(1, ge=1, description="Print a progress line every N iterations.")
    eval_every: int = Field(0, ge=0, description="Evaluate every N iterations (0: only at the end).")
    eval_base: bool = Field(
        True, description="Evaluate the base policy before training (the curve's start and the before/after grid)."
    )
    checkpoint_every: int = Field(
        10, ge=0, description="Checkpoint every N iterations (0: only at the end and when the run fails)."
    )
    keep_checkpoints: int = Field(2, ge=1, description="Keep the last K complete checkpoints.")
    tensorboard: bool = Field(True, description="Also write TensorBoard event files.")
    probe_every: int = Field(
        0, ge=0,
        description="Training monitor: every N iterations, sample a fixed probe set (test prompts, fixed seeds) with "
        "the sampling policy's weights and sampling.num_steps ODE steps, score it and log probe/* (a curve paired "
        "over time; images to TensorBoard). 0: off.",
    )
    probe_images_per_tag: int = Field(
        24, ge=1, description="Probe set size per tag (untagged prompt files: images per prompt is 1)."
    )
    wandb: bool = Field(False, description="Also log metrics (and probe images) to Weights & Biases (`pip install wandb`).")
    wandb_project: str = Field("flowray", description="Weights & Biases project name.")
    wandb_mode: Literal["online", "offline"] = Field(
        "online", description="Weights & Biases mode; 'offline' writes under <output_dir>/wandb for `wandb sync`."
    )


# The `algorithm` section: one of the registered units, chosen by its `name` (the registry is the only list).
AlgorithmSection = Annotated[Union[tuple(ALGORITHMS.values())], Field(discriminator="name")]  # noqa: UP007


class ExperimentConfig(_Section):
    """One run of flowray: every section, plus the seed and the number of iterations."""

    name: str = Field("shapes_flowgrpo", description="Run name (used in logs and the dashboard).")
    seed: int = Field(0, description="Global seed; every actor derives its own from it.")
    iterations: int = Field(100, ge=1, description="Training iterations (one rollout-reward-update-sync each).")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The policy model.")
    algorithm: AlgorithmSection = Field(
        default_factory=default_algorithm,
        description="The RL algorithm, by `name` (algorithms/: flow_grpo, flow_grpo_fast, dance_grpo, mix_grpo, "
        "g2rpo, grpo_guard, flow_dppo, diffusion_nft, awm), with its own settings.",
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="Group size, steps and the SDE step.")
    rewards: RewardsConfig = Field(default_factory=RewardsConfig, description="Reward models and their servers.")
    learner: LearnerConfig = Field(default_factory=LearnerConfig, description="The update's shared settings and the optimiser.")
    data: DataConfig = Field(default_factory=DataConfig, description="Prompts and batch size.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="Ray placement and resources.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Outputs and cadence.")

    @model_validator(mode="after")
    def _cross_field(self) -> ExperimentConfig:
        g, n = self.sampling.group_size, self.data.images_per_iteration
        if n % g:
            raise ValueError(
                f"data.images_per_iteration ({n}) must be a multiple of sampling.group_size ({g}): "
                "every prompt is sampled as one whole group"
            )
        precision, dtype = self.learner.precision, self.model.dtype
        if _PRECISION_MODEL_DTYPE[precision] != dtype and (precision != "fp32" or not self.model.lora.enabled):
            # DeepSpeed casts the learner's whole transformer to bf16/fp16, and a fully fine-tuned
            # transformer is the trainable weights: rollout actors holding another dtype would sample
            # with numbers the learner never recomputes (on-policy ratio != 1).
            raise ValueError(
                f"learner.precision={precision!r} needs model.dtype={_PRECISION_MODEL_DTYPE[precision]!r} "
                f"(got {dtype!r})" + ("" if self.model.lora.enabled else " for full fine-tuning (model.lora.enabled=false)")
                + ": set one to match the other"
            )
        c = self.cluster
        if c.colocate_offload and (not c.colocate or c.async_mode or self.learner.zero_stage == 3):
            # Offloading takes turns: sampling and training must not overlap (async mode), and ZeRO-3's
            # partitioned parameters are moved by DeepSpeed's own hooks, which this path does not cover.
            raise ValueError(
                "cluster.colocate_offload needs cluster.colocate=true, cluster.async_mode=false and "
                f"learner.zero_stage < 3 (got colocate={c.colocate}, async_mode={c.async_mode}, "
                f"zero_stage={self.learner.zero_stage})"
            )
        if c.layout == "hybrid":
            _check_hybrid(c, self.learner.zero_stage)
        if self.cluster.async_mode and self.cluster.max_staleness < 1:
            raise ValueError("cluster.max_staleness must be >= 1 when cluster.async_mode is true")
        _check_step_distilled(self)
        _check_video_scorers(self)
        self.algorithm.check(self)
        return self

    @property
    def prompts_per_iteration(self) -> int:
        return self.data.images_per_iteration // self.sampling.group_size


_PRECISION_MODEL_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _check_step_distilled(cfg: ExperimentConfig) -> None:
    """A per-step algorithm on a step-distilled model (the family table knows which) needs the override."""
    why = family_of(cfg.model.family).step_distilled(cfg.model.path)
    if why and cfg.algorithm.trains_sampling_steps and not cfg.model.allow_step_distilled:
        raise ValueError(
            f"model.path {cfg.model.path!r}: {why}, and algorithm {cfg.algorithm.name!r} trains the log-probs of "
            "each sampling step as an SDE policy, which a step-distilled model's few steps are not. Use a "
            "forward-process algorithm (it trains on final samples), the undistilled base model, or set "
            "model.allow_step_distilled=true to train it anyway"
        )


def _check_video_scorers(cfg: ExperimentConfig) -> None:
    """A video family's samples are [F, H, W, 3] frames: every scorer must take videos (rewards/video.py's
    video_<name> wrappers score sampled frames with an image scorer), or the first request would fail."""
    from rewards.base import scorer_factory

    if not family_of(cfg.model.family).temporal_compression:
        return
    for i, scorer in enumerate(cfg.rewards.scorers):
        if not getattr(scorer_factory(scorer.name), "accepts_video", False):
            raise ValueError(
                f"rewards.scorers[{i}].name={scorer.name!r} scores images, but model.family={cfg.model.family!r} makes "
                f"videos: use video_{scorer.name} (the image scorer over sampled frames, options.frames; docs/video.md)"
            )


def _check_hybrid(c: ClusterConfig, zero_stage: int) -> None:
    """What cluster.layout='hybrid' cannot combine with, each with the reason and the fix."""
    if c.num_rollout_actors != c.num_learner_ranks:
        raise ValueError(
            f"cluster.layout=hybrid: every learner rank samples, so cluster.num_rollout_actors "
            f"({c.num_rollout_actors}) must equal cluster.num_learner_ranks ({c.num_learner_ranks})"
        )
    if c.rollout_num_gpus:
        raise ValueError(
            f"cluster.layout=hybrid: the worker that samples is the learner rank, reserved learner_num_gpus; "
            f"set cluster.rollout_num_gpus=0 (got {c.rollout_num_gpus}) or use cluster.layout=split"
        )
    if c.colocate or c.colocate_offload or c.async_mode:
        raise ValueError(
            "cluster.layout=hybrid already shares each GPU between sampling and training, one after the other: "
            "cluster.colocate, cluster.colocate_offload and cluster.async_mode are for cluster.layout=split "
            f"(got colocate={c.colocate}, colocate_offload={c.colocate_offload}, async_mode={c.async_mode})"
        )
    if zero_stage == 3:
        # A ZeRO-3 rank holds 1/N of every weight; sampling would gather each layer for every one of the
        # ~num_steps x rows forwards, an all-gather per layer per step that costs more than the sampling.
        raise ValueError(
            "cluster.layout=hybrid samples with the engine's own parameters, which learner.zero_stage=3 partitions "
            "across the ranks (each would gather every layer for every sampling step): use learner.zero_stage <= 2 "
            "with hybrid, or cluster.layout=split for ZeRO-3"
        )


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the key."""


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. learner.learning_rate=1e-4)")
    key, raw = item.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key part")
    return key.split("."), yaml.safe_load(raw) if raw != "" else ""


def _child(node: dict | list, part: str, item: str, create: bool) -> tuple[dict | list, str | int]:
    """The container step `part` of override `item` addresses: a dict key, or a list index
    (`rewards.scorers.0.options.reward=strict`, as Hydra writes it); a missing dict section is created."""
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise ConfigError(f"override {item!r}: {part!r} is not an index of a list of {len(node)} items")
        return node, int(part)
    if create:
        node.setdefault(part, {})
    return node, part


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (list items by index); values are parsed as YAML scalars/lists
    (1e-4, true, [1,2])."""
    for item in overrides:
        path, value = _parse_override(item)
        node: dict | list = data
        for part in path[:-1]:
            parent, key = _child(node, part, item, create=True)
            node = parent[key]
            if not isinstance(node, dict | list):
                raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
        parent, key = _child(node, path[-1], item, create=False)
        parent[key] = value
    return data


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        parts = list(e["loc"])
        if parts[:1] == ["algorithm"] and len(parts) > 1 and parts[1] in ALGORITHMS:
            del parts[1]  # pydantic names the union member; the user wrote `algorithm.<key>`
        loc = ".".join(str(p) for p in parts) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "union_tag_invalid" and parts == ["algorithm"]:
            loc, msg = "algorithm.name", unregistered(e["ctx"]["tag"])
        elif e["type"] == "union_tag_not_found" and parts == ["algorithm"]:
            loc, msg = "algorithm.name", f"missing; choose one of {sorted(ALGORITHMS)}"
        got = f" (got {e['input']!r})" if e["type"] != "value_error" and not isinstance(e["input"], dict) else ""
        lines.append(f"  {loc}: {msg}{got}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML preset (default: the shapes Flow-GRPO preset), apply overrides, validate."""
    path = Path(path) if path is not None else DEFAULT_PRESET
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    data = apply_overrides(data, list(overrides or []))
    try:
        data, notice = migrate(data)
    except ValueError as e:
        raise ConfigError(f"invalid config ({path}): {e}") from None
    if notice:
        print(f"[flowray] {path}: {notice}", file=sys.stderr, flush=True)
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, str(path))) from None


def config_reference() -> str:
    """A Markdown reference of every config field, generated from the schema (docs/config.md). The
    `algorithm` section lists each registered unit's fields under `algorithm.<name>.` (written
    `algorithm.<field>` in a preset whose `algorithm.name` is that unit)."""
    rows = ["| key | type | default | description |", "|---|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str, skip: tuple[str, ...] = ()) -> None:
        for name, field in model.model_fields.items():
            if name in skip:
                continue
            ann = field.annotation
            if prefix == "" and name == "algorithm":
                rows.append(f"| `algorithm.name` | str | `{ExperimentConfig().algorithm.name!r}` | {field.description} |")
                for unit_name, unit in sorted(ALGORITHMS.items()):
                    first = " ".join((unit.__doc__ or "").split("\n\n")[0].split()).split(". ")[0].rstrip(".")
                    rows.append(f"| `algorithm.{unit_name}` | section | | {first}. |")
                    walk(unit, f"algorithm.{unit_name}.", skip=("name",))
                continue
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
                continue
            item = next((a for a in get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)), None)
            if item is not None:  # a list of sections, e.g. rewards.scorers[]
                rows.append(f"| `{prefix}{name}` | list | see below | {field.description or ''} |")
                walk(item, f"{prefix}{name}[].")
                continue
            default = "required" if field.is_required() else f"`{field.get_default(call_default_factory=True)!r}`"
            type_name = getattr(ann, "__name__", str(ann)).replace("typing.", "").replace("|", "\\|")
            rows.append(f"| `{prefix}{name}` | {type_name} | {default} | {field.description or ''} |")

    walk(ExperimentConfig, "")
    return "\n".join(rows)
