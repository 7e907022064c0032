"""scripts/device_check.sh and scripts/device_check.py, the GPU check, on what a CPU can run: the shell
script parses and fails clearly before it can start; each check fails the row (and the exit status) on
what it guards against; and the driver runs a per-step row in the hybrid layout and a forward-process row
in the split layout on the tiny model, each trained, evaluated and resumed bit for bit, into one table."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.script_loader import load_script

REPO = Path(__file__).resolve().parents[1]
dc = load_script("scripts/device_check.py")


def _sh(tmp_path, **env):
    """device_check.sh copied alone into a bare folder (no builder, no driver), run there."""
    (tmp_path / "scripts").mkdir(exist_ok=True)
    shutil.copy(REPO / "scripts" / "device_check.sh", tmp_path / "scripts")
    environ = {k: v for k, v in os.environ.items() if k != "MODEL_DIR"} | env
    return subprocess.run(["bash", str(tmp_path / "scripts" / "device_check.sh"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60, env=environ)


@pytest.mark.unit
def test_device_check_sh_parses_and_names_a_missing_builder_or_model(tmp_path):
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "device_check.sh")], check=True)
    proc = _sh(tmp_path)
    assert proc.returncode == 2
    assert "scripts/build_real_width.py is missing" in proc.stderr
    proc = _sh(tmp_path, MODEL_DIR=str(tmp_path))  # real weights: no build, but a diffusers folder
    assert proc.returncode == 2
    assert "has no model_index.json" in proc.stderr


@pytest.mark.unit
def test_device_check_sh_takes_every_family_with_a_row_and_names_them_on_a_wrong_one(tmp_path):
    """FAMILY's values are the models of device_check.py's rows (RUNS): each passes the script's switch and stops
    at the missing builder of the bare folder; any other value is refused with the list."""
    for family in dc.FAMILY_MODELS:
        proc = _sh(tmp_path, FAMILY=family)
        assert proc.returncode == 2 and "scripts/build_real_width.py is missing" in proc.stderr, (family, proc.stderr)
    proc = _sh(tmp_path, FAMILY="flux3")
    assert proc.returncode == 2
    choices = proc.stderr.split("choose ", 1)[1].strip().replace(" or ", ", ").split(", ")
    assert choices == ["sd35", *dc.FAMILY_MODELS]


@pytest.mark.unit
def test_every_row_config_loads_with_the_checks_overrides():
    """What main() does before the first run, for every row (each FAMILY's too): its preset with the row's
    overrides at CPU and at GPU sizes is a valid config (a Flow-GRPO-Fast window must fit the CPU's 3 steps, a
    video model needs a video scorer)."""
    from cluster.config import REPO_ROOT, load_config

    cases = dc.matrix(flux=True, families=dc.FAMILY_MODELS)
    assert {c.model for c in cases} == {"sd35", "flux", *dc.FAMILY_MODELS}
    for gpu in (False, True):
        extra = dc.FLUX_SIZES + dc.VIDEO_REWARD + ([] if gpu else dc.CPU_SIZES)
        for case in cases:
            cfg = load_config(REPO_ROOT / case.config, dc.overrides_for(case, "model", Path("out"), gpu, extra))
            assert cfg.cluster.layout == case.layout and cfg.rewards.scorers[0].name.endswith("shapes_quality")


@pytest.mark.component
def test_the_real_width_builder_builds_every_family_with_a_row():
    """device_check.sh builds FAMILY's folder with scripts/build_real_width.py --family FAMILY."""
    assert set(dc.FAMILY_MODELS) <= set(load_script("scripts/build_real_width.py").FAMILIES)


@pytest.mark.unit
def test_each_check_fails_on_what_it_guards_against(tmp_path):
    on_policy = {"learner/first_minibatch_ratio_mean": 1.0, "learner/first_minibatch_clipfrac": 0.0}
    assert [c.status for c in dc.check_ratio(on_policy, True)] == [dc.PASS, dc.PASS]
    assert [c.status for c in dc.check_ratio(on_policy | {"learner/first_minibatch_ratio_mean": 1.01}, True)] \
        == [dc.FAIL, dc.PASS]
    assert dc.check_ratio(on_policy | {"learner/first_minibatch_clipfrac": 0.125}, True)[1].status == dc.FAIL
    assert dc.check_ratio({}, True)[0].status == dc.FAIL  # a per-step run that does not log it
    assert [c.status for c in dc.check_ratio({}, False)] == [dc.NA, dc.NA]  # the forward-process family

    gib = 2**30
    plans = {"learner-0": 10e9, "rollout-0": 20e9}
    peaks = {"learner-0": {"gpu_peak_allocated_gb": 9e9 / gib}, "rollout-0": {"gpu_peak_allocated_gb": 19e9 / gib}}
    assert dc.check_memory(peaks, plans, gpu=True).status == dc.PASS
    over = peaks | {"learner-0": {"gpu_peak_allocated_gb": 11e9 / gib}}
    cell = dc.check_memory(over, plans, gpu=True)
    assert cell.status == dc.FAIL and "learner-0 11.00 GB > plan 10.00 GB" in cell.text
    assert dc.check_memory(peaks, {"learner-0": 10e9}, gpu=True).status == dc.FAIL  # an actor without a plan
    assert dc.check_memory({"learner-0": {"host_peak_rss_gb": 1.0}}, plans, gpu=True).status == dc.FAIL
    assert dc.check_memory(over, plans, gpu=False).status == dc.SKIP  # host RSS is not what the plan counts

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for folder in (straight, resumed):
        folder.mkdir()
        for name in ("trainable.safetensors", "optimizer_rank0.safetensors"):
            (folder / name).write_bytes(b"same")
    required = ["trainable.safetensors", "optimizer_rank0.safetensors"]
    assert dc.check_resume(straight, resumed, required).status == dc.PASS
    assert dc.check_resume(straight, resumed, [*required, "old_policy.safetensors"]).status == dc.FAIL
    (resumed / "optimizer_rank0.safetensors").write_bytes(b"diff")
    cell = dc.check_resume(straight, resumed, required)
    assert cell.status == dc.FAIL and "optimizer_rank0.safetensors differ" in cell.text

    assert dc.check_eval(tmp_path).status == dc.FAIL  # no eval.json

    case = dc.Case("flow_grpo", "configs/sd35_pickscore.yaml", "sd35", "hybrid")
    passed = dc.Row(case, {c: dc.Cell(dc.PASS, "ok") for c in dc.COLUMNS})
    failed = dc.Row(case, {**passed.cells, "ratio": dc.Cell(dc.FAIL, "1.010000")})
    crashed = dc.Row(case, error="RuntimeError: boom")
    assert passed.ok and not failed.ok and not crashed.ok
    text = dc.table([passed, failed, crashed])
    assert text.splitlines()[0].split(" | ")[-1].strip() == "verdict" and "FAIL: 1.010000" in text
    assert "flow_grpo:hybrid: RuntimeError: boom" in text
    assert dc.report([passed], tmp_path, gpu=False) == 0
    assert dc.report([passed, failed], tmp_path, gpu=False) == 1  # the exit status of the check
    assert "FAIL: 1.010000" in (tmp_path / "device_check.txt").read_text()


@pytest.mark.unit
def test_row_overrides_apply_to_their_run_only():
    nft = dc.Case("diffusion_nft", "configs/sd35_nft_pickscore.yaml", "sd35", "split")
    over = dc.overrides_for(nft, "m", Path("o"), gpu=True, extra=["a.b=1", "diffusion_nft:c.d=2", "flow_grpo:e.f=3",
                                                                  "rewards.scorers=[{name: x}]"])
    assert over[-3:] == ["a.b=1", "c.d=2", "rewards.scorers=[{name: x}]"]
    assert {"cluster.layout=split", "cluster.rollout_num_gpus=0.4", "cluster.sync_backend=object_store"} <= set(over)
    labels = [c.label for c in dc.matrix(flux=True)]
    assert labels == ["flow_grpo:hybrid", "flow_grpo:split", "diffusion_nft:hybrid", "diffusion_nft:split",
                      "flux_g2rpo:hybrid"]


@pytest.mark.system
def test_device_check_matrix_on_the_tiny_model(local_ray, tiny_sd3_path, tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["--model-path", tiny_sd3_path, "--output-dir", str(out), "--only", "flow_grpo:hybrid,diffusion_nft:split",
            "model.lora.rank=4", "model.lora.alpha=8"]
    assert dc.main(argv) == 0
    printed = capsys.readouterr().out
    table = (out / "device_check.txt").read_text()
    assert table in printed
    rows = {tuple(c.strip() for c in line.split(" | ")[:2]): [c.strip() for c in line.split(" | ")]
            for line in table.splitlines()[2:]}
    assert set(rows) == {("flow_grpo", "hybrid"), ("diffusion_nft", "split")}
    grpo, nft = rows["flow_grpo", "hybrid"], rows["diffusion_nft", "split"]
    assert abs(float(grpo[2]) - 1.0) <= 1e-3 and float(grpo[3]) == 0.0  # iteration 1's first minibatch is on-policy
    assert nft[2:4] == ["n/a", "n/a"]  # DiffusionNFT has no ratio
    assert grpo[4].startswith("skip: CPU (plan: hybrid-0 ") and "learner-0" in nft[4] and "rollout-0" in nft[4]
    assert grpo[5].startswith("2 images, shapes_quality") and nft[5].startswith("2 images, shapes_quality")
    assert grpo[6] == "bit-exact (3 files)"  # trainable, optimizer_rank0, ema
    assert nft[6] == "bit-exact (4 files)"  # and old_policy
    assert grpo[-1] == nft[-1] == "PASS"
    assert (out / "diffusion_nft" / "split" / "eval.json").is_file()

    # A failing check fails the row and the exit status: here the resume's comparison finds other bytes.
    last = out / "flow_grpo" / "hybrid_resumed" / "checkpoints" / "iter_000002" / "trainable.safetensors"
    data = last.read_bytes()
    last.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    straight = out / "flow_grpo" / "hybrid" / "checkpoints" / "iter_000002"
    assert dc.check_resume(straight, last.parent, ["trainable.safetensors"]).status == dc.FAIL
