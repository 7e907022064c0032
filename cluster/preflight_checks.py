"""The preflight's checks of the config and the files it names (cluster/preflight.py runs them in the order
of `CONFIG_CHECKS`): prompt files and their fit to the scorers, the evaluation plan, `model.path`, the scorers'
options and weights, the memory plan per actor kind, and the sigma grids the run samples on.

They read files only, so they run anywhere; the model and weight checks run again, with `node=True`, on
every node that hosts actors (cluster/preflight_cluster.py `check_nodes`). `model_spec` and
`scorer_weights` also serve the cost model (cluster/cost_model.py), which finds the model as the memory
check does.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path

from cluster.config import REPO_ROOT, ExperimentConfig
from cluster.preflight_report import PreflightReport, Status

# Scorers that read GenEval metadata records rather than the prompt text.
GENEVAL_SCORERS = ("geneval", "shapes_geneval")
# Scorer constructor options that name weights (a local folder or a hub id).
WEIGHT_OPTIONS = ("model", "detector", "clip", "processor", "clip_processor")


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
        problems = _fit_scorers(records, names, path) + _questions_problems(records, cfg.rewards.scorers, path)
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


# Scorers that ask each prompt's atomic questions (rewards/soft_tifa.py), image or video.
QUESTION_SCORERS = ("soft_tifa", "video_soft_tifa")


def _questions_problems(records: list[dict], scorers, path: Path) -> list[str]:
    """Why a question-answering scorer cannot ask these records (at load, not at the first scoring): with
    `require_questions` every record must carry its `questions`; without, a record lacking them must parse
    into questions (GenEval's templates, rewards/questions.py)."""
    from rewards.questions import UnparsedPrompt, questions_for

    problems = []
    for scorer in (s for s in scorers if s.name in QUESTION_SCORERS):
        require = bool(scorer.options.get("require_questions", False))
        missing, unparsed = [], []
        for index, record in enumerate(records, 1):
            if record.get("questions"):
                continue
            if require:
                missing.append(index)
                continue
            try:
                questions_for(record)
            except UnparsedPrompt as err:
                unparsed.append((index, err))
        if missing:
            first = records[missing[0] - 1]["prompt"]
            problems.append(f"scorer {scorer.name!r} has require_questions set, but {len(missing)} of {len(records)} "
                            f"records of {path} have no `questions` (the first: record {missing[0]}, {first!r}); "
                            f"write them with `python -m rewards questions {path} OUT.jsonl`")
        if unparsed:
            index, err = unparsed[0]
            problems.append(f"scorer {scorer.name!r}: {len(unparsed)} of {len(records)} records of {path} have no "
                            f"`questions` and do not parse into any (the first: record {index}: {err}); add their "
                            "questions to the prompt file")
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


def check_model(cfg: ExperimentConfig, report: PreflightReport, node: bool = False) -> None:
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
            weights = scorer_weight_options(scorer, options)
        except (TypeError, KeyError, ImportError) as err:
            report.add(f"{key}.options", "error", f"scorer {scorer.name!r}: {err}")
            continue
        report.add(f"{key}.options", "ok", f"scorer {scorer.name!r} accepts {sorted(options) or 'no options'}")
        for option, value in weights:
            check_weights(report, weight_key(key, scorer, option), scorer.name, option, value)
        for option, value in scorer_file_options(scorer, options):
            check_weight_file(report, weight_key(key, scorer, option), scorer.name, option, value)


# Scorer constructor options that name one weights file (a local path or `owner/repo/path/in/repo` on the hub).
FILE_OPTIONS = ("checkpoint",)


def scorer_file_options(scorer, options: dict) -> list[tuple[str, str]]:
    """(option, value) of each constructor option of a scorer that names one weights file, set or defaulted."""
    from rewards.base import scorer_factory

    parameters = inspect.signature(scorer_factory(scorer.name)).parameters
    values = [(option, options.get(option, parameters[option].default)) for option in FILE_OPTIONS if option in parameters]
    return [(option, value) for option, value in values if isinstance(value, str) and value]


def check_weight_file(report: PreflightReport, where: str, name: str, option: str, value: str, node: bool = False) -> None:
    """A weights file as the scorer resolves it (rewards/hpsv3.py `resolve_file`): a local file, else a hub file
    'owner/repo/path' (its cache, as for folders)."""
    from rewards.hpsv3 import hub_file

    hub = hub_file(value)
    if hub is None:
        path = Path(value).expanduser()
        if path.is_file():
            report.add(where, "ok", f"scorer {name!r} {option}: local file {path}")
        else:
            report.add(where, "error", f"scorer {name!r} {option}: local file {value!r} does not exist (looked for "
                       f"{path.resolve()}); give an existing file or a hub file 'owner/repo/file'")
        return
    status, message = _hub_message(*hub, node)
    report.add(where, status, f"scorer {name!r} {option}: {message}")


def scorer_weight_options(scorer, options: dict) -> list[tuple[str, str]]:
    """(option, value) of each constructor option of a scorer that names weights, set or defaulted."""
    from rewards.base import scorer_factory

    parameters = inspect.signature(scorer_factory(scorer.name)).parameters
    values = [(option, options.get(option, parameters[option].default)) for option in WEIGHT_OPTIONS
              if option in parameters]
    return [(option, value) for option, value in values if isinstance(value, str) and value]


def weight_key(key: str, scorer, option: str) -> str:
    """The config key that sets a scorer's weight option (or says it is the constructor's default)."""
    if option in scorer.options:
        return f"{key}.options.{option}"
    if option in ("model", "detector") and scorer.model is not None:
        return f"{key}.model"
    return f"{key}.{option} (default)"


def check_weights(report: PreflightReport, where: str, name: str, option: str, value: str, node: bool = False) -> None:
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


def model_spec(cfg: ExperimentConfig):
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


def scorer_weights(scorer) -> list[str]:
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
    spec, source = model_spec(cfg)
    try:
        prompts = {key: _prompt_count(getattr(cfg.data, key)) for key in ("train_prompts", "test_prompts")}
        rewards = [model_specs.reward_spec(scorer_weights(s)) for s in cfg.rewards.scorers]
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



def sampling_grids(cfg: ExperimentConfig) -> dict[str, list[float]]:
    """The sigma grids of training rollouts and of evaluation (what the rollout workers build: models/policy.py
    `Policy.sigmas`). A resolution-dependent shift needs the image token count and the scheduler config, read
    from the model's spec (none printed for a model the planner does not know)."""
    from cluster.model_specs import image_tokens
    from models.families import family_of
    from models.schedule import sigma_schedule

    sc = cfg.sampling
    if sc.shift_mode == "resolution":
        spec, _ = model_spec(cfg)
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


# The checks `preflight` runs, in order; each adds its findings to the report.
CONFIG_CHECKS: tuple[Callable[[ExperimentConfig, PreflightReport], None], ...] = (
    _check_prompts, _check_evaluation, check_model, _check_scorers, _check_memory)
