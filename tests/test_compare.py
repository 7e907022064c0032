"""benchmarks/compare.py smoke: every shapes preset for two iterations on the tiny model."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.script_loader import load_script
from tests.tiny_models import SMALL_EVAL

pytestmark = pytest.mark.system


def test_compare_runs_every_preset_and_writes_table_and_figure(tiny_sd3_path, tmp_path):
    compare = load_script("benchmarks/compare.py")
    argv = [
        "--seeds", "0", "--max-iterations", "2", "--minutes", "1000", "--nfe", "1", "--eval-every", "0",
        "--output", str(tmp_path),
        f"model.path={tiny_sd3_path}", "model.guidance_scale=2.0", "sampling.num_steps=6", "sampling.eval_num_steps=3",
        "algorithm.window_range=[0,3]", "sampling.group_size=4", "data.images_per_iteration=8",
        "data.eval_num_prompts=2", *SMALL_EVAL, "cluster.learner_num_cpus=0.5", "cluster.rollout_num_cpus=0.5",
    ]  # fmt: skip
    results = compare.main(argv)
    assert [r["preset"] for r in results] == compare.PRESETS  # one run per preset serves both budgets
    for r in results:
        assert set(r["at"]) == {"wall", "nfe"}
        for at in r["at"].values():
            assert 0.0 <= at["summary"]["overall"] <= 1.0
        # the NFE budget is crossed by iteration 1 and evaluated there; the wall budget never is (cap)
        assert r["at"]["nfe"]["iterations"] == 1 and r["at"]["nfe"]["reached"]
        assert r["iterations"] == 2 and not r["at"]["wall"]["reached"]
        assert len(r["curve"]) == 3  # base, the NFE crossing, the final evaluation
    g2rpo = next(r for r in results if r["preset"] == "shapes_g2rpo")
    flow = next(r for r in results if r["preset"] == "shapes_flowgrpo")
    assert g2rpo["curve"][-1][1] > flow["curve"][-1][1]  # G2RPO spends more NFE per iteration
    assert all(r["base"] == results[0]["base"] for r in results)  # evaluated once, shared
    assert (tmp_path / "compare.png").stat().st_size > 1000
    table = (tmp_path / "results.md").read_text()
    assert all(p in table for p in compare.PRESETS)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["runs"]) == len(compare.PRESETS) == 11
    for budget, ranked in saved["rankings"].items():  # every preset ranked, with paired intervals
        assert sorted(x["preset"] for x in ranked) == sorted(compare.PRESETS), budget
        changes = [x["change"]["overall"]["difference"] for x in ranked]
        assert changes == sorted(changes, reverse=True)
        assert ranked[0]["vs_best"] == {"difference": 0.0, "ci": [0.0, 0.0]}
        for x in ranked:
            low, high = x["change"]["overall"]["ci"]
            assert low <= x["change"]["overall"]["difference"] <= high
            # vs best = this preset's change minus the best's (same base images, paired)
            assert x["vs_best"]["difference"] == pytest.approx(changes[ranked.index(x)] - changes[0], abs=1e-9)


def test_shared_overrides_skip_the_keys_of_other_algorithms():
    from algorithms import ALGORITHMS

    compare = load_script("benchmarks/compare.py")
    shared = ["algorithm.window_range=[0,3]", "algorithm.nft_beta=0.5", "sampling.group_size=4"]
    assert compare.applicable(shared, ALGORITHMS["diffusion_nft"]()) == ["algorithm.nft_beta=0.5", "sampling.group_size=4"]
    assert compare.applicable(shared, ALGORITHMS["flow_grpo_fast"]()) == ["algorithm.window_range=[0,3]",
                                                                          "sampling.group_size=4"]
    assert compare.applicable(shared, ALGORITHMS["g2rpo"]()) == ["sampling.group_size=4"]


def test_a_diverged_run_is_marked_in_the_table():
    compare = load_script("benchmarks/compare.py")
    change = {"overall": {"difference": -0.5, "ci": [-0.55, -0.45]}}
    row = {"preset": "shapes_awm", "seeds": 1, "reached": False, "diverged": 1, "iterations": 120.0, "nfe": 1.0,
           "wall_s": 300.0, "overall": 0.1, "seed_std": 0.0, "change": change, "vs_best": change["overall"]}
    results = [{"base": {"overall": 0.6}}]
    assert "| shapes_awm (diverged) | 1 | 120 |" in compare.table(results, {"wall": [row]})
    two = {**row, "seeds": 2}
    assert "shapes_awm (diverged in 1 of 2 seeds)" in compare.table(results, {"wall": [two]})


def test_an_edited_preset_or_another_horizon_is_not_the_same_run(tmp_path):
    compare = load_script("benchmarks/compare.py")
    source = compare.REPO_ROOT / "configs" / "shapes_nft.yaml"
    preset = tmp_path / "shapes_nft.yaml"
    preset.write_text(source.read_text())
    cfg = compare.load_config(source)
    settings = {"limits": {"wall": 600}}
    first = compare.preset_settings(settings, preset, compare.schedule_horizon(cfg))
    assert first["lr_schedule_iterations"] == cfg.iterations  # a cosine: its horizon is part of the run
    assert compare.preset_settings(settings, preset, compare.schedule_horizon(cfg)) == first
    edited = yaml.safe_load(source.read_text())
    edited["learner"]["learning_rate"] /= 2
    preset.write_text(yaml.safe_dump(edited))
    assert compare.preset_settings(settings, preset, compare.schedule_horizon(cfg)) != first  # edited: run again
    constant = cfg.model_copy(update={"learner": cfg.learner.model_copy(update={"lr_schedule": "constant"})})
    assert "lr_schedule_iterations" not in compare.preset_settings(settings, preset, compare.schedule_horizon(constant))


def test_budget_crossing_index():
    compare = load_script("benchmarks/compare.py")
    rows = [{"charts/nfe_total": v} for v in (100.0, 250.0, 400.0)]
    assert compare.crossing(rows, "charts/nfe_total", 250) == 1
    assert compare.crossing(rows, "charts/nfe_total", 401) is None


def test_a_rerun_reuses_finished_runs_and_redoes_the_one_cut_off(tiny_sd3_path, tmp_path):
    compare = load_script("benchmarks/compare.py")
    argv = [
        "--seeds", "0", "--max-iterations", "2", "--minutes", "1000", "--nfe", "1", "--eval-every", "0",
        "--presets", "shapes_flowgrpo_fast", "shapes_nft", "--output", str(tmp_path),
        f"model.path={tiny_sd3_path}", "model.guidance_scale=2.0", "sampling.num_steps=6", "sampling.eval_num_steps=3",
        "algorithm.window_range=[0,3]", "sampling.group_size=4", "data.images_per_iteration=8",
        "data.eval_num_prompts=2", *SMALL_EVAL, "cluster.learner_num_cpus=0.5", "cluster.rollout_num_cpus=0.5",
    ]  # fmt: skip
    first = compare.main(argv)
    fast, nft = (tmp_path / f"{p}-seed0" for p in ("shapes_flowgrpo_fast", "shapes_nft"))
    # the run's length is compare's cap; nft's cosine keeps the preset's own horizon, not the cap's
    saved = yaml.safe_load((nft / "config.yaml").read_text())
    assert saved["iterations"] == 2 and saved["learner"]["lr_schedule_iterations"] == compare.load_config(
        compare.REPO_ROOT / "configs" / "shapes_nft.yaml").iterations
    assert "lr_schedule_iterations" not in json.loads((fast / compare.RUN_RESULT).read_text())["settings"]
    (nft / compare.RUN_RESULT).unlink()  # as if the session stopped before nft's run finished
    written = (fast / "metrics.jsonl").stat().st_mtime_ns
    again = compare.main(argv)
    assert (fast / "metrics.jsonl").stat().st_mtime_ns == written  # finished: reused, not trained again
    assert json.loads(json.dumps(again[0])) == json.loads(json.dumps(first[0]))
    assert len((nft / "metrics.jsonl").read_text().splitlines()) == 2  # redone from scratch, not appended to
    assert list((nft / "previous_runs").iterdir())  # the cut-off run's folder is kept aside, not deleted
    assert again[1]["base_file"] == first[0]["base_file"]  # the base evaluation is still shared
    # other budgets or overrides: not the same run (checked on the saved settings; a third compare would
    # only retrain both)
    saved = json.loads((fast / compare.RUN_RESULT).read_text())["settings"]
    assert compare.finished_run(fast, saved) is not None
    for changed in ({"limits": {**saved["limits"], "nfe": 2}}, {"overrides": saved["overrides"][:-1]}):
        assert compare.finished_run(fast, {**saved, **changed}) is None


def test_write_docs_fills_the_compare_block_and_links_the_figure_beside_the_page(tmp_path):
    compare = load_script("benchmarks/compare.py")
    import readme_section  # benchmarks/ is on the path once compare.py is loaded

    default = readme_section.page_of(compare.BEGIN)
    assert default == compare.REPO_ROOT / "docs" / "results.md" and compare.BEGIN in default.read_text()
    page = tmp_path / "docs" / "results.md"
    page.parent.mkdir()
    page.write_text(f"# Results\n\nbefore\n{compare.BEGIN}\nold table\n{compare.END}\nafter\n")
    figure = tmp_path / "run" / "compare.png"
    figure.parent.mkdir()
    figure.write_bytes(b"figure")
    assert compare.write_docs("| new table |", "python benchmarks/compare.py --write-docs", figure, page) == page
    text = page.read_text()
    assert text.startswith("# Results\n\nbefore\n") and text.endswith(f"{compare.END}\nafter\n")
    assert "old table" not in text and "Generated by `python benchmarks/compare.py --write-docs`." in text
    assert "| new table |" in text and "![accuracy vs budget](compare.png)" in text  # relative to the page
    assert (page.parent / "compare.png").read_bytes() == b"figure"
    # the longer budget's block on the same page, its own figure beside the first; the first block unchanged
    begin, end = readme_section.markers("COMPARE LONG RESULTS")
    assert begin in default.read_text()
    page.write_text(f"{text}\n{begin}\n{end}\n")
    compare.write_docs("| long table |", "python benchmarks/compare.py --minutes 20", figure, page, block="long")
    text = page.read_text()
    assert "| new table |" in text and "| long table |" in text.split(begin)[1]
    assert "![accuracy vs budget](compare-long.png)" in text and (page.parent / "compare-long.png").exists()


@pytest.mark.unit
def test_kept_runs_restore_with_every_evaluation_file_they_name(tmp_path):
    """--keep: a finished run's result, its evaluations' summaries and their per-image files come back byte
    for byte into an emptied --output (the machine's outputs/ wiped between sessions)."""
    import shutil

    compare = load_script("benchmarks/compare.py")
    out, keep = tmp_path / "out", tmp_path / "keep"
    run, first = out / "shapes_nft-seed1", out / "shapes_awm-seed0"  # the base evaluation lives in another run
    files = {}
    for folder, name in ((first, "eval_base"), (run, "eval_iter000050"), (run, "eval")):
        folder.mkdir(parents=True, exist_ok=True)
        files[folder / f"{name}.json"] = json.dumps({"images_file": f"{name}_images.jsonl", "overall": 0.5})
        files[folder / f"{name}_images.jsonl"] = f'{{"prompt_index": 0, "run": "{folder.name}/{name}"}}\n'
    result = {"base_file": str(first / "eval_base.json"),
              "at": {"wall": {"eval_file": str(run / "eval.json")}, "nfe": {"eval_file": str(run / "eval_iter000050.json")}}}
    files[run / compare.RUN_RESULT] = json.dumps({"settings": {}, "result": result})
    for path, text in files.items():
        path.write_text(text)
    compare.keep_run(run, out, keep)
    shutil.rmtree(out)
    compare.restore_run(run, out, keep)
    for path, text in files.items():
        assert path.read_text() == text, path
