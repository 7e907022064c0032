"""The algorithm units (algorithms/): every registered unit validates inside the experiment config, the
registry is the only list of algorithms (an unknown or foreign key is an error naming it), configs in the
layout before the `algorithm` section still load (cluster/config_migration.py), and no module outside a
unit compares an algorithm's name (nor outside models/families.py a model family's) as a string."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from algorithms import ALGORITHMS, algorithm_class
from cluster.config import REPO_ROOT, ConfigError, ExperimentConfig, load_config
from models.families import FAMILIES
from tests.tiny_models import FLOWGRPO

pytestmark = pytest.mark.unit

PRESETS = sorted((REPO_ROOT / "configs").glob("*.yaml"))
# What a unit needs from the other sections to validate with its own defaults.
NEEDS = {"dance_grpo": ["sampling.sde_kind=dance"]}


def _load(tmp_path: Path, data: dict | str, overrides: list[str] | tuple = ()):
    path = tmp_path / "config.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return load_config(path, list(overrides))


def _named(field: str) -> str:
    """An error naming algorithm.<field>: pydantic writes a unit's own field under the unit's tag
    (algorithm.<name>.<field>), the units' checks and the migration write it as the key is written."""
    return rf"algorithm\.(\w+\.)?{field}\b"


# ----------------------------------------------------------------------------- (1) defaults validate


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_unit_validates_with_its_defaults_and_its_dump_reads_back(tmp_path, name):
    cfg = _load(tmp_path, "", [f"algorithm.name={name}", *NEEDS.get(name, [])])
    assert type(cfg.algorithm) is ALGORITHMS[name] and cfg.algorithm == ALGORITHMS[name]()
    # A run's config.yaml (cluster/trainer.py dumps it as JSON-mode YAML) reads back to the same config.
    assert _load(tmp_path, cfg.model_dump(mode="json")) == cfg
    assert ExperimentConfig.model_validate(cfg.model_dump()) == cfg


def test_the_default_algorithm_is_flow_grpos_defaults():
    assert ExperimentConfig().algorithm == ALGORITHMS["flow_grpo"]()


# ----------------------------------------------------------------------------- (2) unknown names


def test_an_unknown_algorithm_name_is_a_config_error_listing_the_registered_ones(tmp_path):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, "", ["algorithm.name=ppo"])
    message = str(err.value)
    assert re.search(r"\balgorithm\b", message) and "'ppo'" in message
    assert all(f"'{name}'" in message for name in ALGORITHMS), message
    with pytest.raises(ValueError, match=r"algorithm\.name 'ppo' is not registered; choose one of \["):
        algorithm_class("ppo")
    assert algorithm_class("g2rpo") is ALGORITHMS["g2rpo"]


# ----------------------------------------------------------------------------- (3) foreign keys


def _foreign_setting(name: str) -> tuple[str, str]:
    """A field of another unit that `name`'s unit does not have, and that unit's default as an override value."""
    own = set(ALGORITHMS[name].model_fields)
    other, field = next((o, f) for o in sorted(ALGORITHMS) for f in ALGORITHMS[o].model_fields if f not in own)
    return field, json.dumps(ALGORITHMS[other]().model_dump(mode="json")[field])  # JSON is YAML


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_a_key_of_another_algorithm_is_an_error_naming_it(tmp_path, name):
    field, value = _foreign_setting(name)
    with pytest.raises(ConfigError, match=_named(field) + r".*Extra inputs are not permitted"):
        _load(tmp_path, "", [f"algorithm.name={name}", *NEEDS.get(name, []), f"algorithm.{field}={value}"])


def test_g2rpo_steps_with_flow_grpo_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match=_named("steps")):
        load_config(FLOWGRPO, ["algorithm.steps=[0]"])


# ----------------------------------------------------------------------------- (4) the old layout


def test_an_old_layout_preset_loads_into_its_algorithm_with_a_notice(tmp_path, capsys):
    old = "sampling:\n  strategy: g2rpo\n  g2rpo_steps: [0, 1]\n  group_size: 4\nlearner:\n  loss: grpo_clip\n"
    cfg = _load(tmp_path, old, ["data.images_per_iteration=16"])
    assert cfg.algorithm == ALGORITHMS["g2rpo"](steps=[0, 1]) and cfg.sampling.group_size == 4
    notice = capsys.readouterr().err
    assert "layout before the `algorithm` section" in notice and "algorithm.name = 'g2rpo'" in notice
    assert "sampling.g2rpo_steps -> algorithm.steps" in notice
    # Overrides in the old layout reach it too (an old command line).
    cfg = _load(tmp_path, old, ["data.images_per_iteration=16", "sampling.g2rpo_granularities=[3]"])
    assert cfg.algorithm.granularities == [3]


@pytest.mark.parametrize("old,value,key", [
    ("sampling.window_size", 3, "algorithm.window_size"),
    ("sampling.g2rpo_steps", [0], "algorithm.steps"),
    ("learner.awm_weighting", "t", "algorithm.weighting"),
    ("learner.kl_form", "exact", "algorithm.kl_form"),
    ("sampling.strategy", "mix_grpo", "algorithm.name"),
    ("learner.loss", "grpo_clip", "algorithm.name"),
])  # fmt: skip
def test_an_old_key_beside_an_algorithm_section_is_an_error_naming_its_new_key(tmp_path, old, value, key):
    section, old_key = old.split(".")
    message = rf"{re.escape(old)} belongs to the layout before the `algorithm` section: set {re.escape(key)} instead"
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, {"algorithm": {"name": "mix_grpo"}, section: {old_key: value}})
    with pytest.raises(ConfigError, match=message):  # an override in the old layout on a current preset
        load_config(FLOWGRPO, [f"{old}={json.dumps(value)}"])


# ----------------------------------------------------------------------------- (5) dumped old configs

# Every key the layout before the `algorithm` section had for one algorithm, at that layout's defaults
# (models/config.py and learner/config.py before the change), as an old run's config.yaml holds them:
# cluster/trainer.py dumps JSON-mode YAML, so tuples are lists.
OLD_DEFAULTS = {
    "sampling": {
        "strategy": "flow_grpo", "solver": "ode", "timestep_fraction": 1.0, "window_size": 2, "window_range": [0, 5],
        "window_stride": 1, "window_every": 25, "window_strategy": "progressive", "window_every_min": None,
        "flash": False, "flash_compress_ratio": 0.4, "g2rpo_steps": [0, 1, 2, 3], "g2rpo_granularities": [1, 2],
    },
    "learner": {
        "loss": "grpo_clip", "kl_form": "flow_grpo", "recompute_old_log_probs": False, "train_timesteps": 9,
        "nft_beta": 1.0, "old_policy": "current", "old_policy_decay_flat": 0, "old_policy_decay_rate": 1e-3,
        "old_policy_decay_max": 0.5, "awm_weighting": "uniform", "awm_ghuber_power": 0.25,
    },
}  # fmt: skip


def _old_dump(**changes) -> dict:
    data = {section: dict(keys) for section, keys in OLD_DEFAULTS.items()}
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        data[section][key] = value
    return data


@pytest.mark.parametrize("selector,name", [
    ({}, "flow_grpo"),
    ({"sampling__strategy": "g2rpo"}, "g2rpo"),
    ({"sampling__strategy": "forward_process", "learner__loss": "awm"}, "awm"),
])  # fmt: skip
def test_a_dumped_old_config_with_foreign_keys_at_their_defaults_loads(tmp_path, selector, name):
    cfg = _load(tmp_path, _old_dump(**selector))
    assert cfg.algorithm == ALGORITHMS[name]()


@pytest.mark.parametrize("key,value", [
    ("sampling.g2rpo_steps", [0, 1]),
    ("learner.nft_beta", 0.5),
    ("sampling.window_range", [1, 5]),
])  # fmt: skip
def test_a_foreign_key_away_from_its_default_is_an_error_naming_it(tmp_path, key, value):
    section, old_key = key.split(".")
    with pytest.raises(ConfigError, match=rf"{re.escape(key)} does not apply to algorithm 'flow_grpo': remove it"):
        _load(tmp_path, {"sampling": {"strategy": "flow_grpo"}, section: {old_key: value}})


# ----------------------------------------------------------------------------- (6) shipped presets

# Where each unit field lived before the `algorithm` section (written out here, not read from the units),
# and the strategy and loss that named each algorithm.
OLD_PLACE = {
    **{f: f"sampling.{f}" for f in ("timestep_fraction", "window_size", "window_range", "window_stride", "window_every",
                                    "window_strategy", "window_every_min", "flash", "flash_compress_ratio", "solver")},
    "steps": "sampling.g2rpo_steps", "granularities": "sampling.g2rpo_granularities",
    **{f: f"learner.{f}" for f in ("kl_form", "recompute_old_log_probs", "train_timesteps", "nft_beta", "old_policy",
                                   "old_policy_decay_flat", "old_policy_decay_rate", "old_policy_decay_max")},
    "weighting": "learner.awm_weighting", "ghuber_power": "learner.awm_ghuber_power",
}  # fmt: skip
OLD_SELECTOR = {"diffusion_nft": ("forward_process", "diffusion_nft"), "awm": ("forward_process", "awm")}


def _old_layout(data: dict) -> dict:
    """A preset in the current layout, written in the layout before the `algorithm` section."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    algorithm = data.pop("algorithm")
    name = algorithm.pop("name")
    strategy, loss = OLD_SELECTOR.get(name, (name, "grpo_clip"))
    data.setdefault("sampling", {})["strategy"] = strategy
    data.setdefault("learner", {})["loss"] = loss
    for field, value in algorithm.items():
        section, key = OLD_PLACE[field].split(".")
        data[section][key] = value
    return data


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_loads_and_equals_its_old_layout_read_through_the_migration(tmp_path, preset):
    data = yaml.safe_load(preset.read_text())
    cfg = load_config(preset)
    assert cfg.name == preset.stem and type(cfg.algorithm) is ALGORITHMS[data["algorithm"]["name"]]
    if type(cfg.algorithm).legacy_layout:  # units added with the `algorithm` section had no old layout
        assert _load(tmp_path, _old_layout(data)) == cfg


def test_the_presets_cover_every_model_family_and_learner_plan():
    """At least one preset of each model family and of each algorithm family is in the comparison above."""
    by_name = {p.stem: yaml.safe_load(p.read_text()) for p in PRESETS}
    families = {d["model"]["family"] for d in by_name.values()}
    plans = {ALGORITHMS[d["algorithm"]["name"]].learner_plan for d in by_name.values()}
    assert families == set(FAMILIES) and plans == {cls.learner_plan for cls in ALGORITHMS.values()}


# ----------------------------------------------------------------------------- (7) no name tests

Q = r"""['"]"""
SKIP_DIRS = {"tests", "scripts"}


def _comparison(word: str) -> re.Pattern:
    """`x == "word"`, `x != "word"`, `"word" == x`, `"word" in x`, `x in ("a", "word")`, `case "word":`."""
    w = re.escape(word)
    return re.compile(
        rf"(==|!=)\s*{Q}{w}{Q}|{Q}{w}{Q}\s*(==|!=|\bin\b|\bnot\s+in\b)|\bin\s*[(\[{{][^)\]}}]*{Q}{w}{Q}|\bcase\s+{Q}{w}{Q}"
    )


def _literal_values(*models) -> set[str]:
    """String values of the Literal-typed settings (other than `name`) of these config classes: a name that is
    also such a value ('flow_grpo' is an sde_kind and a kl_form) is only reported where the line reads as a test
    of an algorithm."""
    from typing import get_args

    out = set()
    for model in models:
        for field, info in model.model_fields.items():
            if field != "name":
                out |= {a for a in get_args(info.annotation) if isinstance(a, str)}
    return out


def _python_files() -> list[Path]:
    """The repository's modules: not tests/, scripts/ or hidden folders (.venv, .git)."""
    out = []
    for root, dirs, files in os.walk(REPO_ROOT):
        top = Path(root) == REPO_ROOT
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (top and d in SKIP_DIRS) and d != "__pycache__")
        out += [Path(root) / f for f in sorted(files) if f.endswith(".py")]
    return out


def _hits(names: set[str], allowed: tuple[str, ...]) -> list[str]:
    from models.config import SamplingConfig

    ambiguous = names & _literal_values(SamplingConfig, *ALGORITHMS.values())
    patterns = {n: _comparison(n) for n in names}
    hits = []
    for path in _python_files():
        rel = path.relative_to(REPO_ROOT).as_posix()
        if rel.startswith(allowed):
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            for n, pattern in patterns.items():
                if pattern.search(code) and (n not in ambiguous or re.search(r"name|strateg|loss|algorithm|plan", code)):
                    hits.append(f"{rel}:{lineno}: {line.strip()}")
    return hits


def test_no_module_outside_the_units_compares_an_algorithm_name():
    names = set(ALGORITHMS) | {cls.learner_plan for cls in ALGORITHMS.values()}  # incl. the old 'forward_process'
    assert _hits(names, ("algorithms/", "cluster/config_migration.py")) == []


def test_no_module_outside_the_family_table_compares_a_model_family_name():
    assert _hits(set(FAMILIES), ("models/families.py",)) == []


def test_the_name_scan_finds_what_it_looks_for():
    found = [line for line in ('if cfg.algorithm.name == "g2rpo":', 'ok = strategy in ("dance_grpo", "mix_grpo")',
                               'if "flux" != family:', "match name:\n    case 'awm':")
             if any(_comparison(n).search(line) for n in ("g2rpo", "mix_grpo", "flux", "awm"))]
    assert len(found) == 4
    assert not _comparison("g2rpo").search('PLANS = {"g2rpo": 1}') and not _comparison("sd3").search('f"{x}sd3"')
