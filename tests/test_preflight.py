"""Preflight (`launch.py --dry-run`): every preset passes with ample resources, the shapes presets
with this machine's; a missing prompt file, an incomplete model folder, a missing scorer folder,
prompts a scorer cannot read and too few GPUs are each an error naming the config key."""

import json
from pathlib import Path

import pytest
import torch

from cluster.config import REPO_ROOT, load_config
from cluster.preflight import local_resources, preflight, resource_demand
from models.families import family_of

pytestmark = pytest.mark.unit

PRESETS = sorted((REPO_ROOT / "configs").glob("*.yaml"))
SHAPES = [p for p in PRESETS if p.stem.startswith("shapes_")]
AMPLE = {"CPU": 1024.0, "GPU": 64.0}
SHIPPED_MODEL = REPO_ROOT / "assets" / "models" / "shapes-sd3-tiny"


def fake_pipeline_folder(folder: Path, family: str = "sd3", skip: str | None = None) -> Path:
    """The layout check_pipeline_folder reads (model_index.json, subfolders, weight files), no real weights."""
    names = [n for n in family_of(family).required_components if n != skip]
    index = {"_class_name": {"sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}[family]}
    index.update({n: ["diffusers", "X"] for n in family_of(family).required_components})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(index))
    for name in names:
        (folder / name).mkdir()
        (folder / name / "config.json").write_text("{}")
        (folder / name / "model.safetensors").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def shapes_model(tmp_path_factory) -> list[str]:
    """Overrides that point the shapes presets at a complete folder until the shipped model exists."""
    if SHIPPED_MODEL.is_dir():
        return []
    return [f"model.path={fake_pipeline_folder(tmp_path_factory.mktemp('m') / 'shapes')}"]


def load(path, *overrides):
    return load_config(path, list(overrides))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_passes_with_ample_resources(path, shapes_model):
    cfg = load(path, *(shapes_model if path in SHAPES else []))
    report = preflight(cfg, cluster_resources=AMPLE)
    assert report.ok, report.summary()
    if "/" in cfg.model.path and not Path(cfg.model.path).is_absolute() and path not in SHAPES:
        (model,) = report.find("model.path")
        assert "download" in model.message or "cache" in model.message


@pytest.mark.parametrize("path", SHAPES, ids=lambda p: p.stem)
def test_shapes_presets_pass_on_this_machine(path, shapes_model):
    report = preflight(load(path, *shapes_model))
    assert report.ok, report.summary()
    assert report.resources_source == "this machine"


def test_report_summary_lists_every_check(shapes_model):
    report = preflight(load(SHAPES[0], *shapes_model), cluster_resources=AMPLE)
    text = report.summary()
    for key in ("data.train_prompts", "data.test_prompts", "model.path", "rewards.scorers[0]", "cluster.cpus", "cluster.gpus"):
        assert key in text
    assert text.endswith("preflight OK: 0 error(s), 0 warning(s)")


def test_missing_prompt_file_is_an_error_naming_the_key(shapes_model):
    report = preflight(load(SHAPES[0], *shapes_model, "data.train_prompts=assets/prompts/nope.jsonl"), cluster_resources=AMPLE)
    assert not report.ok
    (error,) = report.errors
    assert error.key == "data.train_prompts" and "nope.jsonl" in error.message


def test_incomplete_model_folder_is_an_error_naming_the_missing_part(tmp_path):
    folder = fake_pipeline_folder(tmp_path / "sd3", skip="vae")
    report = preflight(load(SHAPES[0], f"model.path={folder}"), cluster_resources=AMPLE)
    (error,) = report.errors
    assert error.key == "model.path" and "vae/ (missing)" in error.message


def test_wrong_family_and_non_hub_string_are_errors(tmp_path):
    folder = fake_pipeline_folder(tmp_path / "flux", family="flux")
    assert [c.key for c in preflight(load(SHAPES[0], f"model.path={folder}"), cluster_resources=AMPLE).errors] == ["model.path"]
    report = preflight(load(SHAPES[0], "model.path=not/a/hub/id"), cluster_resources=AMPLE)
    assert [c.key for c in report.errors] == ["model.path"]


def test_too_few_gpus_is_an_error_naming_the_fields():
    cfg = load(REPO_ROOT / "configs" / "sd35_geneval.yaml")
    report = preflight(cfg, cluster_resources={"CPU": 1024.0, "GPU": 8.0})
    (error,) = report.errors
    assert error.key == "cluster.gpus" and "needs 14.5" in error.message and "has 8" in error.message
    for field in ("cluster.rollout_num_gpus", "cluster.learner_num_gpus", "rewards.scorers[0].num_gpus_per_actor"):
        assert field in error.message


def test_cpu_shortfall_is_an_error_on_a_cluster_and_a_warning_on_this_machine(shapes_model):
    cfg = load(SHAPES[0], *shapes_model, "cluster.rollout_num_cpus=4096")
    assert [c.key for c in preflight(cfg, cluster_resources=AMPLE).errors] == ["cluster.cpus"]
    local = preflight(cfg)
    assert local.ok and [c.key for c in local.warnings] == ["cluster.cpus"]
    assert "cluster.rollout_num_cpus" in local.warnings[0].message


def test_resource_demand_counts_colocated_rollout_in_learner_bundles():
    cfg = load(SHAPES[0], "cluster.num_rollout_actors=3", "cluster.num_learner_ranks=2", "cluster.colocate=true",
               "cluster.rollout_num_gpus=0.5", "cluster.learner_num_gpus=0.5")
    demand = resource_demand(cfg)
    assert demand["rollout"]["GPU"] == 2 * 2 * 0.5  # ceil(3 / 2) rollout actors in each of 2 learner bundles
    assert demand["learner"]["GPU"] == 1.0


def test_missing_local_scorer_weights_are_an_error_naming_the_key(tmp_path):
    cfg = load(REPO_ROOT / "configs" / "sd35_pickscore.yaml")
    data = cfg.model_dump()  # dotted overrides cannot index a list: edit the scorer in the dumped config
    data["rewards"]["scorers"][0]["model"] = str(tmp_path / "nope")
    data["rewards"]["scorers"][0]["options"] = {"processor": str(tmp_path)}
    (tmp_path / "preprocessor_config.json").write_text("{}")
    cfg = type(cfg).model_validate(data)
    report = preflight(cfg, cluster_resources=AMPLE)
    assert [c.key for c in report.errors] == ["rewards.scorers[0].model"]
    assert "does not exist" in report.errors[0].message
    assert report.find("rewards.scorers[0].options.processor")[0].status == "ok"


def test_prompts_a_scorer_cannot_read_are_an_error(shapes_model):
    plain = preflight(load(SHAPES[0], *shapes_model, "data.train_prompts=assets/prompts/pickscore_train.jsonl"),
                      cluster_resources=AMPLE)
    assert [c.key for c in plain.errors] == ["data.train_prompts"] and "GenEval metadata" in plain.errors[0].message
    ocr = preflight(load(REPO_ROOT / "configs" / "sd35_ocr.yaml", "data.test_prompts=assets/prompts/pickscore_test.jsonl"),
                    cluster_resources=AMPLE)
    assert [c.key for c in ocr.errors] == ["data.test_prompts"] and "double-quoted" in ocr.errors[0].message


def test_fewer_prompts_than_one_iteration_is_a_warning(tmp_path, shapes_model):
    path = tmp_path / "few.jsonl"
    path.write_text("".join(line for line in (REPO_ROOT / "assets/prompts/shapes_train.jsonl").read_text().splitlines(True)[:3]))
    report = preflight(load(SHAPES[0], *shapes_model, f"data.train_prompts={path}"), cluster_resources=AMPLE)
    assert report.ok and report.find("data.train_prompts")[0].status == "warn"


def test_local_resources_reads_this_machine():
    import os

    assert local_resources()["CPU"] == float(os.cpu_count())


@pytest.mark.parametrize("preset,grid", [("sd35_geneval", "scheduler"), ("flux_dancegrpo_hps", "linear")])
def test_dry_run_prints_the_training_and_evaluation_grids(preset, grid, capsys):
    """`launch.py --dry-run` lists both grids: the SD3.5 presets sample on diffusers' scheduler grid (as
    Flow-GRPO's pipeline does), the FLUX presets on the papers' hand-built linear-shift grid."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    import launch

    rc = launch.main(["--config", str(REPO_ROOT / "configs" / f"{preset}.yaml"), "--dry-run",
                      "--assume-resources", json.dumps(AMPLE)])  # fmt: skip
    lines = {line.split(":")[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("sigmas ")}
    assert rc == 0 and set(lines) == {"sigmas train", "sigmas eval"}
    cfg = load_config(REPO_ROOT / "configs" / f"{preset}.yaml")
    for name, steps in (("train", cfg.sampling.num_steps), ("eval", cfg.sampling.eval_num_steps)):
        printed = [float(v) for v in lines[f"sigmas {name}"].split(": ")[1].split(",")]
        if grid == "scheduler":
            scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
            scheduler.set_timesteps(steps)
            expected = scheduler.sigmas.tolist()
        else:  # DanceGRPO train_grpo_flux.py: sd3_time_shift(3, linspace(1, 0, T + 1))
            expected = [3 * t / (1 + 2 * t) for t in torch.linspace(1, 0, steps + 1, dtype=torch.float64).tolist()]
        assert printed == pytest.approx(expected, abs=6e-5)
