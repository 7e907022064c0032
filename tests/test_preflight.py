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
    cfg = load(SD35, *SPLIT)
    report = preflight(cfg, cluster_resources={"CPU": 1024.0, "GPU": 8.0})
    (error,) = report.errors
    assert error.key == "cluster.gpus" and "needs 15" in error.message and "has 8" in error.message
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


SD35 = REPO_ROOT / "configs" / "sd35_geneval.yaml"  # hybrid; SPLIT turns it into the split layout below
# The split layout the SD3.5 presets had before hybrid: 8 rollout + 6 learner GPUs, whole, collective sync.
SPLIT = ("cluster.layout=split", "cluster.num_rollout_actors=8", "cluster.rollout_num_gpus=1",
         "cluster.num_learner_ranks=6", "cluster.learner_num_gpus=1", "cluster.sync_backend=collective")


@pytest.mark.parametrize("overrides,named", [
    (["cluster.rollout_num_gpus=0.5"], ["cluster.rollout_num_gpus=0.5"]),
    (["cluster.learner_num_gpus=0.4"], ["cluster.learner_num_gpus=0.4"]),
    (["cluster.colocate=true", "cluster.num_rollout_actors=6"], ["cluster.colocate=true"]),
], ids=["rollout_fraction", "learner_fraction", "colocate"])
def test_collective_sync_where_two_ranks_can_share_a_gpu_is_refused_naming_the_keys(overrides, named):
    """NCCL refuses two ranks on one GPU ('Duplicate GPU detected'), so a collective sync group whose
    members Ray may place on one GPU is an error, also where the trainer starts (require_fit)."""
    report = preflight(load(SD35, *SPLIT, *overrides), cluster_resources=AMPLE)
    (error,) = report.find("cluster.sync_backend")  # (a 0.4 GPU share may also not hold its memory plan)
    assert error.status == "error"
    for key in ("cluster.sync_backend=collective", "Duplicate GPU", "cluster.sync_backend=object_store",
                "cluster.rollout_num_gpus", "cluster.learner_num_gpus", "cluster.colocate=false", *named):
        assert key in error.message, key


def test_collective_sync_with_whole_gpus_and_the_hybrid_layout_pass():
    whole = preflight(load(SD35, *SPLIT), cluster_resources=AMPLE)
    assert whole.ok and whole.find("cluster.sync_backend")[0].status == "ok"
    # hybrid has no sync group: a fractional learner share is fine there, whatever sync_backend says
    hybrid = preflight(load(SD35, "cluster.sync_backend=collective", "cluster.learner_num_gpus=0.5",
                            "cluster.gpu_memory_gb=141"), cluster_resources=AMPLE)
    assert hybrid.ok, hybrid.summary()
    assert not hybrid.find("cluster.sync_backend")
    # object_store on a shared GPU is fine
    assert preflight(load(SD35, *SPLIT, "cluster.rollout_num_gpus=0.5", "cluster.sync_backend=object_store"),
                     cluster_resources=AMPLE).ok


def test_dry_run_and_start_up_refuse_the_shared_gpu_and_device_check_avoids_it(capsys, monkeypatch):
    """`launch.py --dry-run` prints the refusal and fails; the trainer's start-up check (require_fit) raises
    it; scripts/device_check.py's one-GPU overrides sync through the object store, so they pass."""
    import launch
    from cluster.ray_init import InsufficientResources, require_fit
    from tests.script_loader import load_script

    rc = launch.main(["--config", str(SD35), "--dry-run", "--assume-resources", json.dumps(AMPLE), *SPLIT,
                      "cluster.rollout_num_gpus=0.4", "cluster.learner_num_gpus=0.4"])
    out = capsys.readouterr().out
    assert rc == 1 and "[ERROR] cluster.sync_backend: cluster.sync_backend=collective" in out

    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: AMPLE)  # require_fit reads the connected cluster's totals
    with pytest.raises(InsufficientResources, match="cluster.sync_backend=collective"):
        require_fit(load(SD35, *SPLIT, "cluster.colocate=true", "cluster.num_rollout_actors=6"))

    overrides = load_script("scripts/device_check.py").check_overrides("assets/models/shapes-sd3-tiny", "out", gpu=True)
    report = preflight(load(REPO_ROOT / "configs" / "sd35_pickscore.yaml", *overrides), cluster_resources=AMPLE)
    assert not report.find("cluster.sync_backend"), report.summary()


def test_the_per_node_check_errs_offline_and_names_the_cache_it_looked_in(monkeypatch, tmp_path):
    """What `check_nodes` runs on each node (tests/test_runtime_env.py runs it on two): a hub id missing from
    that node's cache is an error offline (its actors cannot load it), a warning online (they download it
    again), for model.path and for each scorer's weights, and a missing local folder is an error."""
    from huggingface_hub import constants

    from cluster.preflight_cluster import _node_checks

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    cfg = load(REPO_ROOT / "configs" / "sd35_pickscore.yaml")
    for offline, status in (("1", "error"), ("0", "warn")):
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
        checks = {c.key: c for c in _node_checks(cfg, [0], model=True)}
        assert {"model.path", "rewards.scorers[0].model (default)"} <= set(checks)
        for check in checks.values():
            assert check.status == status and str(tmp_path / "empty-cache") in check.message, check
    assert not _node_checks(cfg, [0], model=False)[0].key.startswith("model.path")
    (missing,) = _node_checks(load(SHAPES[0], f"model.path={tmp_path / 'nope'}"), [], model=True)
    assert missing.status == "error" and "nope" in missing.message


def test_question_answering_prompts_are_checked_at_load():
    """soft_tifa with require_questions needs every record's questions; without it, a record lacking them
    must parse into some (GenEval's templates). Both were found only at the first scoring before."""
    sd35_geneval2 = REPO_ROOT / "configs" / "sd35_geneval2.yaml"
    assert "data.train_prompts" not in [c.key for c in preflight(load(sd35_geneval2), cluster_resources=AMPLE).errors]
    without = preflight(load(sd35_geneval2, "data.train_prompts=assets/prompts/geneval_train.jsonl"), cluster_resources=AMPLE)
    assert "data.train_prompts" in [c.key for c in without.errors]
    message = without.find("data.train_prompts")[0].message
    assert "require_questions" in message and "python -m rewards questions" in message
    cfg = load(sd35_geneval2, "data.train_prompts=assets/prompts/pickscore_train.jsonl")
    data = cfg.model_dump()
    data["rewards"]["scorers"][0]["options"]["require_questions"] = False
    free_text = preflight(type(cfg).model_validate(data), cluster_resources=AMPLE)
    assert "do not parse" in free_text.find("data.train_prompts")[0].message


def test_a_missing_reward_checkpoint_file_is_an_error_naming_the_key(tmp_path):
    cfg = load(REPO_ROOT / "configs" / "sd35_pickscore.yaml")
    data = cfg.model_dump()
    data["rewards"]["scorers"] = [{"name": "hpsv3", "model": str(tmp_path), "options": {
        "checkpoint": str(tmp_path / "HPSv3.safetensors"), "processor": str(tmp_path)}}]
    (tmp_path / "config.json").write_text("{}")
    report = preflight(type(cfg).model_validate(data), cluster_resources=AMPLE)
    assert "rewards.scorers[0].options.checkpoint" in [c.key for c in report.errors]
    (tmp_path / "HPSv3.safetensors").write_bytes(b"")
    report = preflight(type(cfg).model_validate(data), cluster_resources=AMPLE)
    assert report.find("rewards.scorers[0].options.checkpoint")[0].status == "ok"
    data["rewards"]["scorers"][0]["options"].pop("checkpoint")  # the default: a hub file
    default = preflight(type(cfg).model_validate(data), cluster_resources=AMPLE).find("rewards.scorers[0].checkpoint (default)")
    assert default and "MizzenAI/HPSv3" in default[0].message
