"""Preflight: check that a config can run before anything heavy loads (`launch.py --dry-run`).

`preflight(cfg)` reads files and counts resources, nothing more: no weights are loaded, nothing is
downloaded, no actor starts. It checks that
- the prompt files load, fit the reward models (GenEval scorers need GenEval metadata, OCR needs a
  quoted target in every prompt) and hold enough prompts for one iteration;
- `model.path` is a complete local diffusers folder, or a hub id (reported as a download);
- every scorer accepts its options, and its weights are an existing local folder or a hub id;
- the CPUs and GPUs that the rollout actors, learner ranks and reward actors reserve fit the cluster
  (Ray's `cluster_resources()` when connected, else this machine), and no two members of a collective
  weight-sync group can land on one GPU (NCCL refuses them);
- when connected to Ray, that every other node which can host those actors finds the weights they load
  (`check_nodes`: a small task pinned to each node, run with the actors' environment);
- each actor kind's estimated memory (cluster/memory_plan.py, from configs and safetensors headers) fits
  its GPU share of `cluster.gpu_memory_gb`; the breakdown is printed as `memory ...` lines.
Each check is ok, warn or error; `report.ok` is False on any error, and every message names the
config key to change. The summary also lists the sigma grids the run will sample on (`sigmas train:`
and `sigmas eval:` lines), so a grid can be compared with a reference implementation's by eye.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cluster.config import REPO_ROOT, ExperimentConfig

Status = Literal["ok", "warn", "error"]
# Scorers that read GenEval metadata records rather than the prompt text.
GENEVAL_SCORERS = ("geneval", "shapes_geneval")
# Scorer constructor options that name weights (a local folder or a hub id).
WEIGHT_OPTIONS = ("model", "detector", "clip", "processor", "clip_processor")


@dataclass(frozen=True)
class Check:
    """One preflight finding: what was checked (a config key), its status and a sentence for a human."""

    key: str
    status: Status
    message: str


@dataclass
class PreflightReport:
    """Every check of one config; `ok` is False when any check is an error."""

    checks: list[Check] = field(default_factory=list)
    resources_source: str = ""
    grids: dict[str, list[float]] = field(default_factory=dict)  # 'train' / 'eval' -> sigma grid
    memory: list[str] = field(default_factory=list)  # the memory plan's breakdown, per actor kind

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def errors(self) -> list[Check]:
        return [c for c in self.checks if c.status == "error"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == "warn"]

    def add(self, key: str, status: Status, message: str) -> None:
        self.checks.append(Check(key, status, message))

    def find(self, key: str) -> list[Check]:
        """Checks whose key starts with `key` (e.g. 'data.train_prompts', 'rewards.scorers[0]')."""
        return [c for c in self.checks if c.key.startswith(key)]

    def summary(self) -> str:
        lines = [f"sigmas {name}: " + ",".join(f"{v:.4f}" for v in grid) for name, grid in self.grids.items()]
        lines += self.memory
        lines += [f"[{c.status.upper():5}] {c.key}: {c.message}" for c in self.checks]
        verdict = "OK" if self.ok else "FAILED"
        lines.append(f"preflight {verdict}: {len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        return "\n".join(lines)

    __str__ = summary


# ----------------------------------------------------------------------------- paths


def resolve_path(path: str) -> Path:
    """A data path as the run reads it: absolute, else relative to the cwd, else to the repo root."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return candidate
    return REPO_ROOT / candidate


def _looks_local(value: str) -> bool:
    """Path-shaped rather than 'owner/name' hub-id-shaped."""
    return value.startswith(("/", ".", "~")) or value.count("/") != 1 or Path(value).expanduser().exists()


# ----------------------------------------------------------------------------- prompts


def _check_prompts(cfg: ExperimentConfig, report: PreflightReport) -> None:
    from rewards.prompts import load_prompts, prompt_tags

    names = [s.name for s in cfg.rewards.scorers]
    vocabulary: dict = {}
    if "shapes_geneval" in names:  # the shapes detector reads only its own shapes and colours
        from rewards.shapes.world import COLORS, SHAPES

        vocabulary = {"classes": SHAPES, "colors": COLORS}
    for key in ("train_prompts", "test_prompts"):
        value = getattr(cfg.data, key)
        path = resolve_path(value)
        try:
            records = load_prompts(path, **vocabulary)
        except (OSError, ValueError) as err:
            report.add(f"data.{key}", "error", f"{value!r} does not load: {err}")
            continue
        problems = _fit_scorers(records, names, path)
        if key == "train_prompts" and cfg.data.prompt_order == "tag_balanced":
            try:
                prompt_tags(records, value, cfg.data.tag_weights)
            except ValueError as err:
                problems.append(str(err))
        if problems:
            report.add(f"data.{key}", "error", "; ".join(problems))
            continue
        message = f"{len(records)} prompts in {value}"
        status: Status = "ok"
        if key == "train_prompts" and len(records) < cfg.prompts_per_iteration:
            status = "warn"
            message += (f", fewer than the {cfg.prompts_per_iteration} prompts of one iteration "
                        "(data.images_per_iteration / sampling.group_size): prompts repeat within an iteration")
        if key == "test_prompts" and cfg.data.eval_num_prompts and cfg.data.eval_num_prompts > len(records):
            status = "warn"
            message += f"; data.eval_num_prompts ({cfg.data.eval_num_prompts}) exceeds them: all are used"
        report.add(f"data.{key}", status, message)


def _check_evaluation(cfg: ExperimentConfig, report: PreflightReport) -> None:
    """The evaluation plan's size, cost and worst-case intervals (data.eval_*), and whether it meets
    its own interval targets."""
    from cluster.config import ConfigError
    from cluster.eval_stats import worst_case_halfwidths
    from cluster.evaluation import plan_for

    try:
        plan = plan_for(cfg, "test")
    except ConfigError as err:
        report.add("data.eval_images_per_tag", "error", str(err))
        return
    except (OSError, ValueError):
        return  # the prompt file's own error is reported by _check_prompts
    worst = worst_case_halfwidths(plan.images_per_tag())
    report.add("data.eval_images_per_tag", "ok",
               f"test evaluation: {plan.num_images} images ({plan.images_per_tag()} per tag), worst-case 95% "
               f"half-width overall +-{worst['overall']:.3f}, widest tag +-{max(v for k, v in worst.items() if k != 'overall'):.3f}")


def _fit_scorers(records: list[dict], scorers: list[str], path: Path) -> list[str]:
    """Why these records cannot feed these scorers ([] when they can)."""
    from rewards.ocr import _QUOTED
    from rewards.prompts import is_geneval_record

    problems = []
    geneval = [s for s in scorers if s in GENEVAL_SCORERS]
    if geneval and not all(is_geneval_record(r) for r in records):
        problems.append(f"scorer(s) {geneval} read GenEval metadata (tag, include), but {path} holds plain prompts")
    if "ocr" in scorers:
        for index, record in enumerate(records):
            match = _QUOTED.search(record["prompt"])
            if match is None or not match.group(1).strip():
                problems.append(f"the ocr scorer needs a double-quoted target text in every prompt; record "
                                f"{index + 1} of {path} has none: {record['prompt']!r}")
                break
    return problems


# ----------------------------------------------------------------------------- weights


def _hub_cached(repo_id: str, filename: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except ValueError:  # not a valid repo id
        return False


def _hub_message(repo_id: str, filename: str, node: bool = False) -> tuple[Status, str]:
    """Whether a hub id is in the Hugging Face cache. node=True: the check runs on a node that will load
    it (`check_nodes`), where a cache miss is that node's own download (warn) or, offline, a load that
    fails (error); the message names the cache folder looked in."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if _hub_cached(repo_id, filename):
        return "ok", f"hub id {repo_id!r}, found in the local Hugging Face cache"
    if node:
        from huggingface_hub import constants

        where = f"hub id {repo_id!r} is not in this node's Hugging Face cache {constants.HF_HUB_CACHE}"
        if offline:
            return "error", f"{where} and HF_HUB_OFFLINE is set: loading will fail here"
        return "warn", f"{where}: every actor here downloads it (set HF_HOME or HF_HUB_CACHE to a shared cache)"
    if offline:
        return "warn", (f"hub id {repo_id!r} will download on first load, but HF_HUB_OFFLINE is set and it is "
                        "not in the local cache: loading will fail until it is downloaded")
    return "ok", f"hub id {repo_id!r}: will download on first load (not in the local Hugging Face cache)"


def _check_model(cfg: ExperimentConfig, report: PreflightReport, node: bool = False) -> None:
    from models.policy import ModelFolderError, check_pipeline_folder, resolve_model_path

    value = cfg.model.path
    try:
        location = resolve_model_path(value)
    except ModelFolderError as err:
        report.add("model.path", "error", str(err))
        return
    if Path(location).is_dir():
        try:
            check_pipeline_folder(Path(location), cfg.model.family)
        except (ModelFolderError, ValueError) as err:  # ValueError: an unreadable model_index.json
            report.add("model.path", "error", str(err))
            return
        report.add("model.path", "ok", f"complete local {cfg.model.family} pipeline folder {location}")
        return
    if Path(location).exists():
        report.add("model.path", "error", f"{location} is a file; expected a diffusers pipeline folder or a hub id")
        return
    report.add("model.path", *_hub_message(location, "model_index.json", node))


def _check_scorers(cfg: ExperimentConfig, report: PreflightReport) -> None:
    from rewards.base import check_scorer_options

    for i, scorer in enumerate(cfg.rewards.scorers):
        key = f"rewards.scorers[{i}]"
        try:
            options = scorer.scorer_options()
            check_scorer_options(scorer.name, options)
            weights = _scorer_weight_options(scorer, options)
        except (TypeError, KeyError, ImportError) as err:
            report.add(f"{key}.options", "error", f"scorer {scorer.name!r}: {err}")
            continue
        report.add(f"{key}.options", "ok", f"scorer {scorer.name!r} accepts {sorted(options) or 'no options'}")
        for option, value in weights:
            _check_weights(report, _weight_key(key, scorer, option), scorer.name, option, value)


def _scorer_weight_options(scorer, options: dict) -> list[tuple[str, str]]:
    """(option, value) of each constructor option of a scorer that names weights, set or defaulted."""
    from rewards.base import scorer_factory

    parameters = inspect.signature(scorer_factory(scorer.name)).parameters
    values = [(option, options.get(option, parameters[option].default)) for option in WEIGHT_OPTIONS
              if option in parameters]
    return [(option, value) for option, value in values if isinstance(value, str) and value]


def _weight_key(key: str, scorer, option: str) -> str:
    """The config key that sets a scorer's weight option (or says it is the constructor's default)."""
    if option in scorer.options:
        return f"{key}.options.{option}"
    if option in ("model", "detector") and scorer.model is not None:
        return f"{key}.model"
    return f"{key}.{option} (default)"


def _check_weights(report: PreflightReport, where: str, name: str, option: str, value: str, node: bool = False) -> None:
    if _looks_local(value):
        path = resolve_path(value)
        if not path.is_dir():
            report.add(where, "error", f"scorer {name!r} {option}: local folder {value!r} does not exist "
                       f"(looked for {path}); give an existing folder or a hub id 'owner/name'")
        elif not any(path.glob("*.json")):
            report.add(where, "error", f"scorer {name!r} {option}: {path} holds no config (*.json); save the "
                       "model with save_pretrained(folder)")
        else:
            report.add(where, "ok", f"scorer {name!r} {option}: local folder {path}")
        return
    status, message = _hub_message(value, "config.json" if "processor" not in option else "preprocessor_config.json", node)
    report.add(where, status, f"scorer {name!r} {option}: {message}")


# ----------------------------------------------------------------------------- memory


def _model_spec(cfg: ExperimentConfig):
    """(PipelineSpec, where it comes from) for model.path, or (None, why not)."""
    from cluster import model_specs
    from models.policy import ModelFolderError, resolve_model_path

    try:
        location = resolve_model_path(cfg.model.path)
    except ModelFolderError:
        return None, "model.path does not resolve"
    folder = Path(location)
    if not folder.is_dir() and _hub_cached(location, "model_index.json"):
        from huggingface_hub import try_to_load_from_cache

        folder = Path(try_to_load_from_cache(location, "model_index.json")).parent
    if folder.is_dir():
        try:
            return model_specs.pipeline_spec(folder, cfg.model.family), f"the configs and safetensors headers in {folder}"
        except (OSError, KeyError, ValueError) as err:  # an incomplete cache snapshot, a config without a key
            if location not in model_specs.PUBLISHED_PIPELINES:
                return None, f"{folder} could not be read ({type(err).__name__}: {err})"
    if location in model_specs.PUBLISHED_PIPELINES:
        return model_specs.PUBLISHED_PIPELINES[location], f"the published architecture of {location}"
    return None, f"{location!r} is neither a local folder nor a hub id the planner knows"


def _scorer_weights(scorer) -> list[str]:
    """The weights a scorer loads (its `model`/`detector`/`clip` option or default), as paths or hub ids."""
    from rewards.base import scorer_factory

    parameters = inspect.signature(scorer_factory(scorer.name)).parameters
    options = scorer.scorer_options()
    values = [options.get(name, parameters[name].default) for name in WEIGHT_OPTIONS
              if name in parameters and "processor" not in name]
    return [str(resolve_path(v)) if _looks_local(v) else v for v in values if isinstance(v, str) and v]


def _prompt_count(path: str) -> int:
    from rewards.prompts import load_prompts

    return len({r["prompt"] for r in load_prompts(resolve_path(path))})


def _check_memory(cfg: ExperimentConfig, report: PreflightReport) -> None:
    """The memory plan per actor kind against its GPU share (cluster/memory_plan.py)."""
    from cluster import memory_plan, model_specs

    if any(c.status == "error" for c in report.find("model.path")):
        return  # the model's own error says what is wrong with it
    spec, source = _model_spec(cfg)
    try:
        prompts = {key: _prompt_count(getattr(cfg.data, key)) for key in ("train_prompts", "test_prompts")}
        rewards = [model_specs.reward_spec(_scorer_weights(s)) for s in cfg.rewards.scorers]
    except (OSError, ValueError, KeyError, TypeError):
        return  # the prompt files' and scorers' own errors are reported by their checks
    if spec is None:
        report.add("memory", "warn", f"no memory estimate: {source}")
        return
    unknown = [s.name for s, r in zip(cfg.rewards.scorers, rewards, strict=True) if r is None]
    rewards = [r or model_specs.RewardSpec(0) for r in rewards]
    plans = memory_plan.plan_memory(cfg, spec, rewards, train_prompts=prompts["train_prompts"],
                                    test_prompts=prompts["test_prompts"])
    report.memory.append(f"memory plan (estimate; from {source}; GB = 1e9 bytes):")
    for plan in plans:
        report.memory += plan.lines()
        key = "memory." + plan.kind.replace(" ", "_")
        if plan.fits:
            where = "on CPU" if plan.budget_bytes is None else f"fits {plan.budget_bytes / memory_plan.GB:.1f} GB"
            report.add(key, "ok", f"{plan.total / memory_plan.GB:.1f} GB estimated, {where}")
        else:
            report.add(key, "error", plan.advice())
    if unknown:
        report.add("memory.rewards", "warn", f"scorer weights of {unknown} are neither local folders nor known "
                   "hub ids: their memory is not estimated")


# ----------------------------------------------------------------------------- resources


def resource_demand(cfg: ExperimentConfig) -> dict[str, dict[str, float]]:
    """CPUs and GPUs each part of the run reserves: {'rollout'|'learner'|'rewards[i]': {'CPU', 'GPU'}}.

    Colocated rollout actors share the learner ranks' bundles (cluster/placement.py): each learner
    bundle then also holds ceil(actors / ranks) rollout actors' resources.
    """
    c = cfg.cluster
    rollout_copies = c.num_learner_ranks * math.ceil(c.num_rollout_actors / c.num_learner_ranks) if c.colocate \
        else c.rollout_processes
    demand = {
        "rollout": {"CPU": rollout_copies * c.rollout_num_cpus, "GPU": rollout_copies * c.rollout_num_gpus},
        "learner": {"CPU": c.num_learner_ranks * c.learner_num_cpus, "GPU": c.num_learner_ranks * c.learner_num_gpus},
    }
    for i, s in enumerate(cfg.rewards.scorers):
        demand[f"rewards.scorers[{i}]"] = {"CPU": s.actors * s.num_cpus_per_actor, "GPU": s.actors * s.num_gpus_per_actor}
    return demand


def _terms(cfg: ExperimentConfig, resource: str) -> list[str]:
    """The config keys behind the demand for one resource, as 'count x per-actor' terms."""
    c, per = cfg.cluster, {"CPU": "cpus", "GPU": "gpus"}[resource]
    terms = []
    if getattr(c, f"rollout_num_{per}"):
        terms.append(f"cluster.num_rollout_actors ({c.num_rollout_actors}) x cluster.rollout_num_{per} "
                     f"({getattr(c, f'rollout_num_{per}'):g})")
    if getattr(c, f"learner_num_{per}"):
        terms.append(f"cluster.num_learner_ranks ({c.num_learner_ranks}) x cluster.learner_num_{per} "
                     f"({getattr(c, f'learner_num_{per}'):g})")
    for i, s in enumerate(cfg.rewards.scorers):
        if getattr(s, f"num_{per}_per_actor"):
            terms.append(f"rewards.scorers[{i}].actors ({s.actors}) x rewards.scorers[{i}].num_{per}_per_actor "
                         f"({getattr(s, f'num_{per}_per_actor'):g}) [{s.name}]")
    return terms


def local_resources() -> dict[str, float]:
    """This machine: logical CPUs and visible CUDA GPUs."""
    try:
        import torch

        gpus = torch.cuda.device_count()
    except ImportError:
        gpus = 0
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(gpus)}


def detect_resources() -> tuple[dict[str, float], str]:
    """(resources, where they come from): the connected Ray cluster, else this machine."""
    try:
        import ray

        if ray.is_initialized():
            return dict(ray.cluster_resources()), "the connected Ray cluster"
    except ImportError:
        pass
    return local_resources(), "this machine"


def check_resources(cfg: ExperimentConfig, report: PreflightReport, resources: dict, local: bool) -> None:
    """Add a cluster.cpus and a cluster.gpus check: the run's demand against `resources` (a local Ray
    short of CPUs is only a warning: cluster/ray_init.py sizes it to fit), and the sync group's GPU
    sharing (`check_sync_gpus`). The trainer calls this at start-up (cluster/ray_init.py `require_fit`)."""
    check_sync_gpus(cfg, report)
    demand = resource_demand(cfg)
    for resource in ("CPU", "GPU"):
        need = sum(part[resource] for part in demand.values())
        have = float(resources.get(resource, 0.0))
        key = f"cluster.{resource.lower()}s"
        detail = " + ".join(_terms(cfg, resource)) or "nothing"
        if need <= have + 1e-9:
            report.add(key, "ok", f"needs {need:g} {resource}(s) of {have:g} on {report.resources_source}")
        elif resource == "CPU" and local:
            # cluster/ray_init.py sizes a local Ray to the demand, so actors share the cores (slower, still correct).
            report.add(key, "warn", f"needs {need:g} CPUs ({detail}) but {report.resources_source} has {have:g}: "
                       "a local Ray is sized to fit, so the actors share the cores")
        else:
            report.add(key, "error", f"needs {need:g} {resource}(s) ({detail}) but {report.resources_source} has "
                       f"{have:g}: lower these counts or per-actor {resource}s, or add {resource}s")


def check_sync_gpus(cfg: ExperimentConfig, report: PreflightReport) -> None:
    """An error when cluster.sync_backend=collective can put two members of the weight-sync group on one
    GPU. On CUDA the group is a ProcessGroupNCCL (common/collective.py), and NCCL refuses two ranks on one
    device ("Duplicate GPU detected"). Ray packs fractional GPU shares onto one GPU, and cluster.colocate
    puts rollout actors in the learner ranks' bundles to share theirs. cluster.layout=hybrid has no sync
    group."""
    c = cfg.cluster
    if c.layout != "split" or c.sync_backend != "collective" or not (c.rollout_num_gpus > 0 and c.learner_num_gpus > 0):
        return
    reasons = [f"cluster.{key}={getattr(c, key):g} is a fraction of a GPU, which Ray may pack with other shares "
               "onto one GPU" for key in ("rollout_num_gpus", "learner_num_gpus") if getattr(c, key) < 1]
    if c.colocate:
        reasons.append("cluster.colocate=true puts rollout actors in the learner ranks' bundles to share their GPUs")
    if not reasons:
        report.add("cluster.sync_backend", "ok", "collective weight sync: every member of the group has its own GPU")
        return
    report.add("cluster.sync_backend", "error", "cluster.sync_backend=collective broadcasts weights over NCCL, which "
               "refuses two ranks on one GPU ('Duplicate GPU detected'), and a learner rank and a rollout actor can "
               f"land on one GPU here: {'; '.join(reasons)}. Set cluster.sync_backend=object_store, or give "
               "cluster.rollout_num_gpus and cluster.learner_num_gpus whole GPUs with cluster.colocate=false")


# ----------------------------------------------------------------------------- the nodes that load weights


def _node_checks(cfg: ExperimentConfig, scorers: list[int], model: bool) -> list[Check]:
    """On one node, in the actors' environment: whether model.path (model=True) and the weights of the
    scorers with these indices are where their actors will look for them."""
    report = PreflightReport()
    if model:
        _check_model(cfg, report, node=True)
    for i in scorers:
        scorer, key = cfg.rewards.scorers[i], f"rewards.scorers[{i}]"
        try:
            weights = _scorer_weight_options(scorer, scorer.scorer_options())
        except (TypeError, KeyError, ImportError):
            continue  # the driver's own check names the error
        for option, value in weights:
            _check_weights(report, _weight_key(key, scorer, option), scorer.name, option, value, node=True)
    return report.checks


def _fits(node: dict, cpus: float, gpus: float) -> bool:
    have = node["Resources"]
    return have.get("CPU", 0.0) >= cpus - 1e-9 and have.get("GPU", 0.0) >= gpus - 1e-9


def hosting_nodes(cfg: ExperimentConfig, placement=None) -> dict[str, dict]:
    """Node id -> {'address', 'model' (True: a learner rank or rollout actor there loads model.path),
    'scorers' (indices of the scorers whose reward actors can run there)} for every live node that will or
    can host an actor of the run. With `placement` (cluster/placement.py), the policy's nodes are those of
    its bundles; else every node with the resources of one learner rank or rollout actor. Reward actors are
    placed by their pools, outside the group: every node with one actor's resources can host one."""
    import ray

    c = cfg.cluster
    alive = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
    if placement is not None:
        from ray.util import placement_group_table

        policy = set(placement_group_table(placement.group)["bundles_to_node_id"].values())
    else:
        kinds = [(c.learner_num_cpus, c.learner_num_gpus)]
        if c.rollout_processes:
            kinds.append((c.rollout_num_cpus, c.rollout_num_gpus))
        policy = {i for i, n in alive.items() if any(_fits(n, *kind) for kind in kinds)}
    hosts = {}
    for node_id, node in alive.items():
        scorers = [i for i, s in enumerate(cfg.rewards.scorers) if _fits(node, s.num_cpus_per_actor, s.num_gpus_per_actor)]
        if node_id in policy or scorers:
            hosts[node_id] = {"address": node["NodeManagerAddress"], "model": node_id in policy, "scorers": scorers}
    return hosts


def check_nodes(cfg: ExperimentConfig, placement=None, *, skip_driver_node: bool = False,
                timeout_s: float = 120.0) -> PreflightReport:
    """Check, on every node that will load weights (`hosting_nodes`), what `_check_model` and the scorers'
    weight checks check on the driver: a Ray task pinned to each node (NodeAffinitySchedulingStrategy), with
    the environment the actors get (common/runtime_env.py), so a cache folder or local model folder missing
    on one node is an error naming the node and the path, before any actor loads. The driver's own node is
    checked in this process (its actors get the driver's hub settings), or skipped (`skip_driver_node`,
    when the caller has checked it already): a single-node cluster starts no task."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from common.runtime_env import actor_env

    report = PreflightReport(resources_source="the connected Ray cluster")
    hosts = hosting_nodes(cfg, placement)
    driver = ray.get_runtime_context().get_node_id()
    findings: dict[str, list[Check]] = {}
    pending = {}
    task = ray.remote(num_cpus=0, max_retries=0)(_node_checks)
    for node_id, host in hosts.items():
        if node_id == driver:
            if not skip_driver_node:
                findings[node_id] = _node_checks(cfg, host["scorers"], host["model"])
            continue
        ref = task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                           runtime_env=actor_env(1)).remote(cfg, host["scorers"], host["model"])
        pending[ref] = node_id
    ready, late = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s) if pending else ([], [])
    for ref in ready:
        try:
            findings[pending[ref]] = ray.get(ref)
        except Exception as err:  # noqa: BLE001 - a node that cannot run the check is reported, not fatal
            report.add("cluster.nodes", "warn", f"{_node_name(hosts, pending[ref])}: the weights check failed "
                       f"({type(err).__name__}: {err})")
    for ref in late:
        ray.cancel(ref, force=True)
        report.add("cluster.nodes", "warn", f"{_node_name(hosts, pending[ref])}: the weights check did not "
                   f"answer within {timeout_s:g} s")
    for node_id, checks in findings.items():
        for check in checks:
            if check.status != "ok":
                report.add(check.key, check.status, f"on {_node_name(hosts, node_id)}: {check.message}")
    if findings and not report.checks:
        report.add("cluster.nodes", "ok", f"the weights were found on every node that loads them ({len(findings)} "
                   f"checked: {', '.join(_node_name(hosts, n) for n in findings)})")
    return report


def _node_name(hosts: dict[str, dict], node_id: str) -> str:
    host = hosts[node_id]
    roles = (["learner ranks and rollout actors"] if host["model"] else []) + \
        [f"reward actors of rewards.scorers[{i}]" for i in host["scorers"]]
    return f"node {host['address']} ({node_id[:8]}, can host {', '.join(roles)})"


# ----------------------------------------------------------------------------- entry point


def sampling_grids(cfg: ExperimentConfig) -> dict[str, list[float]]:
    """The sigma grids of training rollouts and of evaluation (what the rollout workers build: models/policy.py
    `Policy.sigmas`). A resolution-dependent shift needs the image token count and the scheduler config, read
    from the model's spec (none printed for a model the planner does not know)."""
    from cluster.model_specs import image_tokens
    from models.families import family_of
    from models.schedule import sigma_schedule

    sc = cfg.sampling
    if sc.shift_mode == "resolution":
        spec, _ = _model_spec(cfg)
        if spec is None:
            return {}
        tokens = image_tokens(spec, cfg.model.resolution)
        grid = family_of(cfg.model.family).resolution_sigmas  # FLUX.2's mu is its own (models/family_flux2.py)
        return {name: grid(steps, tokens, spec.scheduler).tolist()
                for name, steps in (("train", sc.num_steps), ("eval", sc.eval_num_steps))}
    return {
        name: sigma_schedule(sc.sigma_schedule, steps, sc.shift).tolist()
        for name, steps in (("train", sc.num_steps), ("eval", sc.eval_num_steps))
    }


def preflight(cfg: ExperimentConfig, *, cluster_resources: dict | None = None) -> PreflightReport:
    """Validate a config without loading weights; see the module docstring for what is checked.

    cluster_resources: Ray-style totals ({'CPU': n, 'GPU': m}); None reads the connected Ray
    cluster, else this machine (where a CPU shortfall is only a warning: a local Ray is sized to fit).
    Connected to Ray (and no totals given), the other nodes that load weights are checked too (`check_nodes`).
    """
    local = cluster_resources is None and not _ray_connected()
    if cluster_resources is None:
        cluster_resources, source = detect_resources()
    else:
        source = "the given cluster resources"
    report = PreflightReport(resources_source=source, grids=sampling_grids(cfg))
    steps: list[Callable[[ExperimentConfig, PreflightReport], None]] = [_check_prompts, _check_evaluation, _check_model,
                                                                      _check_scorers, _check_memory]
    for step in steps:
        step(cfg, report)
    check_resources(cfg, report, cluster_resources, local)
    if source == "the connected Ray cluster":
        report.checks += check_nodes(cfg, skip_driver_node=True).checks
    return report


def _ray_connected() -> bool:
    try:
        import ray

        return ray.is_initialized()
    except ImportError:
        return False
