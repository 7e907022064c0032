"""What a user reads without the code: captioned grids (a title, column headings, the prompt of each row,
each image's verdict as a coloured frame and mark, the reward where there is no verdict), the progress
lines of an evaluation (images done, elapsed, ETA) and the training progress line's ETA."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from cluster import metrics
from cluster.metrics import MetricsLogger, Progress, progress_line
from cluster.plots import (
    MARK_COLORS,
    Caption,
    before_after_grid,
    captioned_grid,
    default_font,
    fit_lines,
    image_grid,
)


def _images(n: int, side: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 60, (n, side, side, 3), dtype=np.uint8)  # dark: no mark colours


def _where(grid: np.ndarray, color: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of the pixels of exactly this colour."""
    return np.nonzero(np.all(grid == np.array(color, dtype=np.uint8), axis=-1))


def _text_rows(grid: np.ndarray) -> np.ndarray:
    """Rows holding dark grey-to-black pixels outside the images (text): a text band's rows."""
    dark = np.all(grid < 90, axis=-1) & (np.ptp(grid.astype(int), axis=-1) < 10)
    return np.nonzero(dark.any(axis=1))[0]


@pytest.mark.unit
def test_a_captioned_grid_is_larger_than_the_bare_one_with_a_heading_band_and_a_mark_per_verdict():
    images = _images(4)
    captions = [Caption("a photo of a red circle", "colors", True), Caption("a photo of a red circle", "colors", False),
                Caption("a photo of two squares", "counting", False), Caption("a photo of two squares", "counting", True)]
    grid = captioned_grid(images, captions, columns=2, title="eval: accuracy 0.500")
    bare = image_grid(images, columns=2)
    assert grid.dtype == np.uint8 and grid.shape[0] > 3 * bare.shape[0] and grid.shape[1] > 3 * bare.shape[1]
    green, red = _where(grid, MARK_COLORS[True]), _where(grid, MARK_COLORS[False])
    assert green[0].size and red[0].size
    first_tile, left = min(green[0].min(), red[0].min()), min(green[1].min(), red[1].min())
    assert first_tile > 20 and _text_rows(grid[:first_tile]).size  # the title and headings above the tiles
    assert _text_rows(grid[first_tile:, :left]).size  # the prompts left of the rows
    # row 0: correct then wrong; row 1: wrong then correct (two prompts, two rows of two)
    mid_x, mid_y = (green[1].max() + green[1].min()) // 2, (green[0].max() + green[0].min()) // 2
    assert (green[1][green[0] < mid_y] < mid_x).all() and (red[1][red[0] < mid_y] > mid_x).all()
    assert (green[1][green[0] > mid_y] > mid_x).all() and (red[1][red[0] > mid_y] < mid_x).all()
    # in each judged tile's corner a mark, white strokes: a check on green, a cross on red
    y, x = green[0].min(), green[1].min()
    check = np.all(grid[y : y + 16, x : x + 16] == 255, axis=-1)
    y = red[0].min()
    x = red[1][red[0] == y].min()
    cross = np.all(grid[y : y + 16, x : x + 16] == 255, axis=-1)
    assert check.sum() > 10 and cross.sum() > 10 and (check != cross).sum() > 10


@pytest.mark.unit
def test_without_verdicts_each_image_gets_its_reward_under_it_and_a_neutral_frame():
    images = _images(2)
    judged = captioned_grid(images, [Caption("p", "t", True, 1.0), Caption("p", "t", False, 0.0)], 2, "t")
    scored = captioned_grid(images, [Caption("p", "", None, 0.25), Caption("p", "", None, None)], 2, "t")
    assert scored.shape[0] > judged.shape[0]  # a line for the rewards
    assert not _where(scored, MARK_COLORS[True])[0].size and not _where(scored, MARK_COLORS[False])[0].size
    assert _where(scored, MARK_COLORS[None])[0].size
    assert Caption("p", reward=0.25).note() == "0.250" and Caption("p").note() == "-" and Caption("p", correct=True).note() == ""


@pytest.mark.unit
def test_before_after_has_two_headed_blocks_with_the_verdicts_of_each(tmp_path):
    before, after = _images(4), _images(4)
    out = before_after_grid(before, after, tmp_path / "ba.png", per_prompt=2,
                            before_captions=[Caption("p0", "a", False)] * 2 + [Caption("p1", "b", False)] * 2,
                            after_captions=[Caption("p0", "a", True)] * 2 + [Caption("p1", "b", True)] * 2,
                            title="before -- eval_base | after -- eval")
    grid = np.asarray(Image.open(out).convert("RGB"))
    green, red = _where(grid, MARK_COLORS[True]), _where(grid, MARK_COLORS[False])
    assert red[1].max() < green[1].min()  # every "before" image was wrong, every "after" one right
    first_tile = red[0].min()
    rule = np.all(grid[first_tile:] == 0, axis=-1).all(axis=0)  # the black rule between the blocks
    assert rule.any() and red[1].max() < np.nonzero(rule)[0].min() < green[1].min()
    assert grid.shape[0] > 2 * 4 * 32 and _text_rows(grid[:first_tile]).size
    bare = before_after_grid(before, after, tmp_path / "bare.png", per_prompt=2)  # no captions: still headed
    assert np.asarray(Image.open(bare)).shape[1] == grid.shape[1]


@pytest.mark.unit
def test_long_prompts_are_wrapped_and_cut_to_fit():
    lines = fit_lines("a photo of " + "a very long and winding description " * 10, width=150, max_lines=3)
    assert len(lines) == 3 and lines[-1].endswith("...") and all(default_font().getlength(x) <= 150 for x in lines)
    assert fit_lines("a photo of a cat", width=400, max_lines=2) == ["a photo of a cat"]


# ----------------------------------------------------------------------------- progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.unit
def test_evaluation_progress_prints_counts_elapsed_and_eta_in_a_few_lines(capsys):
    clock = FakeClock()
    progress = Progress("eval 'eval_base'", 1200, clock=clock)
    for done in range(0, 1201, 20):  # 60 updates over 40 s: a line at most every 10 s
        clock.now = 100.0 + done / 30
        progress.update(done)
    clock.now += 2.0  # scoring
    assert progress.finish() == pytest.approx(1200 / 42)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[flowray] eval 'eval_base': 1200 images to do"
    assert lines[1] == "[flowray] eval 'eval_base': 300/1200 images (25%), 10 s, ETA 30 s"
    assert 4 <= len(lines) <= 6 and all(line.startswith("[flowray] eval 'eval_base': ") for line in lines)
    assert lines[-1] == "[flowray] eval 'eval_base': done, 1200 images in 42 s (28.6 images/s)"


@pytest.mark.unit
def test_progress_without_a_count_uses_an_earlier_pace_then_doubles_its_interval(capsys):
    clock = FakeClock()
    paced = Progress("eval 'eval'", 600, rate=20.0, clock=clock)  # 30 s expected
    clock.now += 12
    paced.update()
    unknown = Progress("eval 'probe'", 600, clock=clock)
    for _ in range(79):
        clock.now += 1
        unknown.update()
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["[flowray] eval 'eval': 600 images to do, ETA ~30 s",
                         "[flowray] eval 'eval': 600 images under way, 12 s, ETA ~18 s"]
    beats = [line.split(", ")[1] for line in lines[3:]]
    assert beats == ["10 s", "20 s", "40 s"]  # no pace known: lines at doubling intervals


@pytest.mark.unit
def test_progress_line_gives_the_pace_and_the_eta_of_the_remaining_iterations():
    m = {"reward/mean": 0.4, "time/step": 2.0}
    assert progress_line(10, 60, m, seconds_per_iteration=3.0).endswith("| 3.0 s/it, ETA 2m 30s")
    assert progress_line(10, 60, m).endswith("| 2.0 s/it, ETA 1m 40s")  # without the recent pace: this step's
    assert progress_line(60, 60, m, 3.0).endswith("ETA 0 s")
    assert "ETA" not in progress_line(1, 60, {})
    assert metrics.duration(42.4) == "42 s" and metrics.duration(7300) == "2h 01m"


@pytest.mark.unit
def test_the_logger_measures_the_recent_pace_between_iterations(tmp_path, monkeypatch):
    times = iter([0.0, 5.0, 9.0, 15.0])
    monkeypatch.setattr(metrics, "time", SimpleNamespace(time=time.time, monotonic=lambda: next(times)))
    logger = MetricsLogger(tmp_path, tensorboard=False, ray_gauges=False)
    logger.log(0, {"reward/mean": 0.1})
    assert logger.seconds_per_iteration() is None
    for it in (1, 2, 3):
        logger.log(it, {"reward/mean": 0.1})
    assert logger.seconds_per_iteration() == pytest.approx(5.0)
    logger.close()


# ----------------------------------------------------------------------------- an evaluation


@pytest.mark.component
def test_an_evaluation_prints_its_progress_and_writes_a_captioned_grid(tmp_path, capsys):
    """Clean renders of each prompt's scene for even image indices, empty images for odd ones: the grid
    frames both verdicts, and the evaluation says how far it is."""
    from cluster.evaluation import evaluate, plan_evaluation, sample_sharded
    from common.data_plane import EvalShare
    from rewards.base import build_scorer
    from rewards.prompts import load_prompts
    from rewards.shapes import Scene, render, sample_scene

    records = load_prompts("assets/prompts/shapes_test.jsonl")[:3]
    plan = plan_evaluation(records, split="test", seed=3, images_per_tag=None, images_per_prompt=4)
    by_prompt = {r["prompt"]: r for r in records}

    def share(_, prompts, seeds, keep):
        images = np.stack([render(sample_scene(by_prompt[p], np.random.default_rng(s)) if j % 2 == 0 else Scene(()))
                           for p, per_prompt in zip(prompts, seeds, strict=True) for j, s in enumerate(per_prompt)])
        return EvalShare.of(images, range(len(images)))

    scorer = build_scorer("shapes_geneval")
    result = evaluate(plan, lambda p, s, k: sample_sharded([None], p, s, k, share),
                      lambda parts: [{"shapes_geneval": scorer(*part)} for part in parts], output_dir=tmp_path)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[flowray] eval 'eval': 12 images to do"
    assert out[-1].startswith("[flowray] eval 'eval': done, 12 images in ")
    grid = np.asarray(Image.open(tmp_path / "eval_grid.png").convert("RGB"))
    assert grid.shape[1] > 4 * 32 * 4 and grid.shape[0] > 3 * 32 * 4  # three rows of four, enlarged
    assert _where(grid, MARK_COLORS[True])[0].size and _where(grid, MARK_COLORS[False])[0].size
    assert result.summary["overall"] == pytest.approx(0.5)
    probe = result.picture(plan.image_index(per_prompt=2, prompts_per_tag=1), columns=2)  # the probe's grid
    assert probe.dtype == np.uint8 and probe.shape[1] < grid.shape[1] and _where(probe, MARK_COLORS[False])[0].size
