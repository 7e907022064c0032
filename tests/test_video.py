"""Video rewards over sampled frames (rewards/video.py) and the pictures of videos (cluster/plots.py): the wrapper is
the image scorer's mean over evenly spaced frames, a video with an unscored frame is unscored, the temporal watch is a
diagnostic, declared inputs reach the image scorer per frame; still grids show frame strips, GIFs move."""

from __future__ import annotations

import numpy as np
import pytest

from rewards.base import (
    ScoreResult,
    build_scorer,
    call_scorer,
    register_scorer,
    scorer_factory,
    scorer_inputs,
)
from rewards.video import VideoFrameScorer, frame_indices, temporal_diagnostics

pytestmark = pytest.mark.unit


def _videos(b: int = 3, f: int = 9, side: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (b, f, side, side, 3), dtype=np.uint8)


@register_scorer("test_mean_red")
class _MeanRed:
    """The mean red channel; a video whose metadata says `fail` loses its first sampled frame only (the first row
    holding that metadata record: the wrapper repeats a video's record for each of its frames)."""

    name = "test_mean_red"
    groupwise = True

    def __init__(self):
        self.seen_groups = None

    def __call__(self, images, prompts, metadata, groups=None):
        self.seen_groups = groups
        reward = images[..., 0].reshape(len(images), -1).mean(axis=1) / 255
        first = {}
        scored = np.array([not (m.get("fail", False) and first.setdefault(id(m), i) == i) for i, m in enumerate(metadata)])
        return ScoreResult(reward, {"red": reward}, scored)


def test_frame_indices_are_evenly_spaced_with_both_ends():
    assert frame_indices(33, 4).tolist() == [0, 11, 21, 32]
    assert frame_indices(5, 2).tolist() == [0, 4]
    assert frame_indices(3, 8).tolist() == [0, 1, 2]  # a short video: every frame once
    assert frame_indices(9, 1).tolist() == [0]
    with pytest.raises(ValueError, match="frames"):
        frame_indices(9, 0)


def test_the_video_reward_is_the_image_scorers_mean_over_sampled_frames():
    videos = _videos()
    scorer = build_scorer("video_shapes_quality", frames=3)
    image = build_scorer("shapes_quality")
    result = scorer(videos, ["a", "b", "c"], None)
    frames = videos[:, [0, 4, 8]]
    per_frame = image(frames.reshape(-1, 16, 16, 3), ["x"] * 9, None)
    np.testing.assert_allclose(result.reward, per_frame.reward.reshape(3, 3).mean(axis=1))
    np.testing.assert_allclose(result.diagnostics["clean"], per_frame.diagnostics["clean"].reshape(3, 3).mean(axis=1))
    assert set(result.diagnostics) == {"clean", "background", "temporal_diff", "temporal_cos"}
    one_frame = scorer(videos[:, 0], ["a", "b", "c"], None)  # images are one-frame videos
    np.testing.assert_allclose(one_frame.reward, image(videos[:, 0], ["a"] * 3, None).reward)
    assert one_frame.diagnostics["temporal_diff"].tolist() == [0, 0, 0]


def test_the_temporal_watch_reads_motion_and_never_the_reward():
    still = np.repeat(_videos(2, 1), 6, axis=1)
    moving = _videos(2, 6, seed=1)
    d_still, d_moving = temporal_diagnostics(still), temporal_diagnostics(moving)
    np.testing.assert_allclose(d_still["temporal_diff"], 0)
    np.testing.assert_allclose(d_still["temporal_cos"], 1, atol=1e-6)
    assert (d_moving["temporal_diff"] > 0.2).all() and (abs(d_moving["temporal_cos"]) < 0.2).all()
    scorer = build_scorer("video_shapes_quality", frames=2)
    assert scorer(still, ["a", "b"], None).reward.tolist() == scorer(still[:, :1], ["a", "b"], None).reward.tolist()


def test_a_video_with_an_unscored_frame_is_unscored_and_declared_inputs_reach_each_frame():
    scorer = VideoFrameScorer("test_mean_red", frames=2)
    assert scorer_inputs(scorer)["groupwise"]  # the image scorer's declaration, seen through the wrapper
    videos = _videos(3, 5)
    result = call_scorer(scorer, videos, ["a", "a", "b"], [{}, {"fail": True}, {}], groups=np.array([0, 0, 1]))
    assert result.scored.tolist() == [True, False, True] and np.isnan(result.reward[1])
    np.testing.assert_allclose(result.reward[0], videos[0, [0, 4], ..., 0].mean() / 255)
    # one group per (video group, sampled frame): frame j of each video beside frame j of the others
    assert scorer.image_scorer.seen_groups.tolist() == [0, 0, 1, 1, 2, 3]


def test_frame_groups_put_like_frames_of_a_group_side_by_side_and_scores_come_back_in_place():
    from rewards.video import _unpermute, frame_groups

    order, ids = frame_groups(np.array([7, 7, 7, 3, 3]), k=2)
    # rows video-major (video v's frame j at 2v + j); reordered: group 7's frame 0 of videos 0-2, then their frame 1, ...
    assert order.tolist() == [0, 2, 4, 1, 3, 5, 6, 8, 7, 9] and ids.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
    scored = ScoreResult(np.arange(10.0)[order], {"d": -np.arange(10.0)[order]})
    back = _unpermute(scored, order)
    assert back.reward.tolist() == list(range(10)) and back.diagnostics["d"].tolist() == [-x for x in range(10)]


def test_video_scorers_exist_for_every_image_scorer_with_its_options():
    from rewards.config import ScorerConfig

    factory = scorer_factory("video_pickscore")
    assert factory.accepts_video and scorer_inputs(factory)["groupwise"] is False
    assert scorer_inputs(scorer_factory("video_pairwise_pickscore"))["groupwise"]
    options = ScorerConfig(name="video_pickscore", model="/m", options={"frames": 8}).scorer_options()
    assert options == {"frames": 8, "model": "/m", "num_threads": 1, "device": "cpu"}
    with pytest.raises(ValueError, match="no option"):
        ScorerConfig(name="video_shapes_quality", options={"fps": 8})
    with pytest.raises(Exception, match=r"images must be \[B, H, W, 3\]"):  # the image scorer refuses videos
        build_scorer("shapes_quality")(_videos(), ["a", "b", "c"], None)


def test_still_pictures_show_frame_strips_and_gifs_move(tmp_path):
    from PIL import Image

    from cluster.plots import Caption, animated_grids, stills

    videos = _videos(4, 9, side=8)
    strips = stills(videos)
    assert strips.shape == (4, 8, 4 * 9 - 1, 3)  # 4 frames and 3 gutters
    np.testing.assert_array_equal(strips[:, :, :8], videos[:, 0])
    np.testing.assert_array_equal(strips[:, :, -8:], videos[:, 8])
    assert stills(videos[:, 0]).shape == (4, 8, 8, 3)  # images stay images
    captions = [Caption("a red circle", reward=0.5)] * 2 + [Caption("two squares", reward=0.1)] * 2
    paths = animated_grids(videos, captions, 2, "eval", tmp_path / "videos", "eval")
    assert [p.name for p in paths] == ["eval_0.gif", "eval_1.gif"]
    with Image.open(paths[0]) as gif:
        assert gif.n_frames == 9 and gif.info["loop"] == 0


def test_tensorboard_gets_the_probe_videos_as_an_animated_gif_without_moviepy(tmp_path):
    """MetricsLogger.log_video: PIL's GIF in an image summary at the step (what torch's add_video writes, which needs
    moviepy), read back from the event file."""
    import io

    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cluster.metrics import MetricsLogger
    from cluster.plots import Caption, animated_grid

    videos = _videos(4, 9, side=8)
    captions = [Caption("a red circle", reward=0.5)] * 2 + [Caption("two squares", reward=0.1)] * 2
    frames = animated_grid(videos, captions, 2, "probe")
    logger = MetricsLogger(tmp_path, ray_gauges=False)
    logger.log_video("probe/videos", frames, step=3)
    logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0}).Reload()
    [event] = events.Images("probe/videos")
    assert event.step == 3 and event.encoded_image_string.startswith(b"GIF8")
    assert (event.height, event.width) == frames[0].shape[:2]
    with Image.open(io.BytesIO(event.encoded_image_string)) as gif:
        assert gif.n_frames == 9 and gif.size == (event.width, event.height)
        first = np.asarray(gif.convert("RGB"))
        gif.seek(8)
        assert not np.array_equal(np.asarray(gif.convert("RGB")), first)  # it moves
