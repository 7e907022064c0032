"""cluster/config.py: presets load, overrides apply, every invalid field is named in the error."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.config import REPO_ROOT, ConfigError, ExperimentConfig, config_reference, load_config
from tests.script_loader import load_script
from tests.tiny_models import FLOWGRPO

pytestmark = pytest.mark.unit

PRESETS = sorted((REPO_ROOT / "configs").glob("*.yaml"))


def test_default_preset_loads():
    cfg = load_config()  # the main job: DiffusionNFT (docs/results.md)
    assert cfg.algorithm.name == "diffusion_nft"
    assert cfg.prompts_per_iteration * cfg.sampling.group_size == cfg.data.images_per_iteration


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_validates(preset):
    assert isinstance(load_config(preset), ExperimentConfig)


def test_overrides_are_typed():
    # A whole section replaces the preset's (the flow_grpo preset's timestep_fraction is no g2rpo key).
    cfg = load_config(FLOWGRPO, ["learner.learning_rate=1e-5", "algorithm={name: g2rpo, steps: [0, 1]}",
                                 "cluster.async_mode=true"])
    assert cfg.learner.learning_rate == 1e-5
    assert cfg.algorithm.steps == [0, 1]
    assert cfg.cluster.async_mode is True


@pytest.mark.parametrize(
    "override,named",
    [
        ("learner.learning_rate=-1", "learner.learning_rate"),
        ("learner.lr=1", "learner.lr: Extra inputs are not permitted"),
        ("sampling.strategy=ppo", "sampling.strategy"),
        ("sampling.group_size=1", "sampling.group_size"),
        ("sampling.group_size=7", "data.images_per_iteration (64) must be a multiple of sampling.group_size (7)"),
        ("learner.zero_stage=4", "learner.zero_stage"),
        ("algorithm.name=ppo", "algorithm.name: 'ppo' is not registered"),
        ("algorithm.timestep_fraction=2", "algorithm.timestep_fraction"),
        ("sampling.noise_level=-0.1", "sampling.noise_level"),
        ("rewards.scorers=[{name: nope}]", "rewards.scorers.0.name"),
        ("cluster.async_mode=true", None),
        ("model.family=unet", "model.family"),
    ],
)
def test_invalid_fields_are_named(override, named):
    if named is None:
        load_config(FLOWGRPO, [override])
        return
    with pytest.raises(ConfigError) as err:
        load_config(FLOWGRPO, [override])
    assert named in str(err.value)


def test_cross_field_errors_name_the_key():
    with pytest.raises(ConfigError, match="algorithm.steps must lie in"):
        load_config(FLOWGRPO, ["algorithm={name: g2rpo, steps: [9]}"])
    with pytest.raises(ConfigError, match="cluster.max_staleness must be >= 1"):
        load_config(FLOWGRPO, ["cluster.async_mode=true", "cluster.max_staleness=0"])


def test_bad_files_and_overrides(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(FLOWGRPO, ["learner.learning_rate"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(FLOWGRPO, ["seed.x=1"])
    with pytest.raises(ConfigError, match="'5' is not an index of a list of 2 items"):
        load_config(FLOWGRPO, ["rewards.scorers.5.weight=1"])


def test_overrides_address_list_items_by_index():
    cfg = load_config(FLOWGRPO, ["rewards.scorers.0.options.reward=strict", "rewards.scorers.1.weight=0.5"])
    assert cfg.rewards.scorers[0].options["reward"] == "strict" and cfg.rewards.scorers[1].weight == 0.5
    assert cfg.rewards.scorers[0].name == "shapes_geneval"  # the rest of the item is kept


def test_reference_documents_every_field():
    ref = config_reference()
    assert "| `learner.clip_range` |" in ref and "| `algorithm.g2rpo.granularities` |" in ref
    for line in ref.splitlines()[2:]:
        assert not line.rstrip().endswith("|  |"), f"undocumented field: {line}"


def test_config_reference_page_is_current():
    gen = load_script("scripts/gen_config_reference.py")
    assert gen.PAGE == REPO_ROOT / "docs" / "config.md"
    page = gen.PAGE.read_text()
    assert gen.render(page) == page, "docs/config.md is stale: run scripts/gen_config_reference.py"
