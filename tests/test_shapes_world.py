"""The shapes world: renders, scenes that satisfy their prompts, a detector exact on clean renders and
strict about everything else (noise, block clutter, malformed blobs, specks, extra objects)."""

import numpy as np
import pytest
from scipy import ndimage

from rewards.geneval_rules import GENEVAL_TAGS
from rewards.shapes import detect, score_image
from rewards.shapes.world import (
    BACKGROUND,
    COLORS,
    LABEL_NOISE_TAGS,
    PALETTE,
    SHAPES,
    Scene,
    ShapeObject,
    all_records,
    mislabeled_caption,
    noisy_caption,
    render,
    sample_scene,
    shape_mask,
    underspecified_caption,
)

pytestmark = pytest.mark.unit

RECORDS = all_records()
PROMPTS = {r["prompt"]: r for records in RECORDS.values() for r in records}
PALETTE_AND_BACKGROUND = np.array([BACKGROUND, *PALETTE.values()], dtype=np.uint8)


def scenes_of_every_tag(seed, per_tag):
    rng = np.random.default_rng(seed)
    for tag in GENEVAL_TAGS:
        for _ in range(per_tag):
            record = RECORDS[tag][rng.integers(len(RECORDS[tag]))]
            yield record, sample_scene(record, rng)


def blocks(rng, fill):
    """A 32 px image of 4x4 blocks, each a random palette colour with probability `fill`."""
    index = np.where(rng.random((8, 8)) < fill, rng.integers(1, len(PALETTE) + 1, (8, 8)), 0)
    return np.kron(PALETTE_AND_BACKGROUND[index], np.ones((4, 4, 1), dtype=np.uint8))


def paint(mask, x=8, y=8, color="red", image=None):
    image = render(Scene(())) if image is None else image.copy()
    image[y:y + mask.shape[0], x:x + mask.shape[1]][mask] = PALETTE[color]
    return image


# --- world --------------------------------------------------------------------------------------

def test_prompt_space_sizes_and_geneval_phrasing():
    sizes = {tag: len(records) for tag, records in RECORDS.items()}
    assert sizes == {"single_object": 3, "two_object": 6, "counting": 9, "colors": 12, "position": 24,
                     "color_attr": 72}
    assert len(PROMPTS) == sum(sizes.values())
    for prompt in ("a photo of a circle", "a photo of a circle and a square", "a photo of three triangles",
                   "a photo of a red circle", "a photo of a square left of a circle",
                   "a photo of a red circle and a blue square"):
        assert prompt in PROMPTS
    assert PROMPTS["a photo of three triangles"]["exclude"] == [{"class": "triangle", "count": 4}]
    assert PROMPTS["a photo of a square left of a circle"]["include"] == [
        {"class": "circle", "count": 1}, {"class": "square", "count": 1, "position": ["left of", 0]}]


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_masks_touch_every_side_of_their_box(shape):
    for side in range(8, 17):
        mask = shape_mask(shape, side, side)
        assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()


def test_render_has_hard_edges_on_a_plain_background():
    scene = Scene((ShapeObject("circle", "red", 2, 3, 11), ShapeObject("triangle", "blue", 18, 18, 12)))
    image = render(scene)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert {tuple(c) for c in image.reshape(-1, 3)} == {BACKGROUND, PALETTE["red"], PALETTE["blue"]}


def test_render_rejects_objects_outside_the_image():
    with pytest.raises(ValueError, match="does not fit"):
        render(Scene((ShapeObject("square", "red", 25, 0, 10),)))


def test_sampled_scenes_are_well_formed():
    for record, scene in scenes_of_every_tag(seed=0, per_tag=30):
        assert sum(req["count"] for req in record["include"]) == len(scene.objects)
        for obj in scene.objects:
            assert 10 <= obj.size <= 13 and obj.x >= 1 and obj.y >= 1 and obj.x + obj.size <= 31
        boxes = [o.box for o in scene.objects]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert a[2] + 2 <= b[0] or b[2] + 2 <= a[0] or a[3] + 2 <= b[1] or b[3] + 2 <= a[1]


# --- detector: exact on clean renders ------------------------------------------------------------

def test_detector_is_exact_on_clean_renders_of_every_tag():
    for record, scene in scenes_of_every_tag(seed=1, per_tag=60):
        image = render(scene)
        found = detect(image)
        assert found.valid, found.reason
        expected = sorted((o.shape, o.color, o.box) for o in scene.objects)
        assert sorted((d.label, d.color, d.box) for d in found.objects) == expected
        assert all(d.score == 1.0 for d in found.objects)
        assert np.array_equal(np.any([d.mask for d in found.objects], axis=0), image.any(axis=-1))
        result = score_image(image, record)
        assert (result.correct, result.strict, result.partial) == (1.0, 1.0, 1.0), record["prompt"]


def test_detector_tolerates_soft_edges_and_mild_noise():
    rng = np.random.default_rng(2)
    readable = 0
    pairs = list(scenes_of_every_tag(seed=3, per_tag=10))
    for _, scene in pairs:
        soft = ndimage.gaussian_filter(render(scene).astype(float), (0.7, 0.7, 0))
        noisy = np.clip(soft + rng.normal(0, 15, soft.shape), 0, 255).round().astype(np.uint8)
        found = detect(noisy)
        readable += found.valid and sorted(d.label for d in found.objects) == sorted(o.shape for o in scene.objects)
    assert readable >= 0.95 * len(pairs)


# --- detector: strict about everything else ------------------------------------------------------

def test_pure_noise_is_invalid():
    rng = np.random.default_rng(4)
    for _ in range(100):
        found = detect(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        assert not found.valid and "off-palette" in found.reason


@pytest.mark.parametrize("fill", [1.0, 0.5, 0.2])
def test_block_clutter_never_scores(fill):
    rng = np.random.default_rng(5)
    for i in range(100):
        image = blocks(rng, fill)
        assert not detect(image).valid
        record = list(PROMPTS.values())[i % len(PROMPTS)]
        assert score_image(image, record).partial == 0.0


def test_noisy_background_is_invalid():
    rng = np.random.default_rng(6)
    image = render(Scene((ShapeObject("square", "green", 5, 5, 12),))).astype(float)
    noisy = np.clip(image + rng.normal(0, 40, image.shape), 0, 255).astype(np.uint8)
    assert not detect(noisy).valid


_DISC = shape_mask("circle", 12, 12)
MALFORMED = {
    "upside-down triangle": shape_mask("triangle", 12, 12)[::-1],
    "sideways triangle": shape_mask("triangle", 12, 12).T,
    "rectangle": np.ones((8, 14), dtype=bool),
    "ellipse": shape_mask("circle", 10, 15),
    "ring": _DISC & ~np.pad(shape_mask("circle", 6, 6), 3),
    "cross": np.add.outer(np.abs(np.arange(12) - 5.5) < 2, np.abs(np.arange(12) - 5.5) < 2),
    "L": np.pad(np.ones((12, 4), bool), ((0, 0), (0, 8))) | np.pad(np.ones((4, 12), bool), ((8, 0), (0, 0))),
    "rounded square": np.add.outer((np.arange(12) - 5.5) ** 2, (np.arange(12) - 5.5) ** 2) <= 6.5 ** 2,
    "two touching squares": np.ones((10, 21), dtype=bool),
    "flood": np.ones((20, 20), dtype=bool),
    "speck": np.ones((3, 3), dtype=bool),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_blobs_are_invalid(name):
    image = paint(MALFORMED[name])
    found = detect(image)
    assert not found.valid
    assert found.reason
    assert score_image(image, PROMPTS["a photo of a red circle"]).partial == 0.0


def test_a_speck_or_stray_blob_beside_a_valid_shape_is_invalid():
    image = paint(shape_mask("circle", 12, 12), x=4, y=4)
    assert detect(image).valid
    speck = image.copy()
    speck[25:27, 25:27] = PALETTE["blue"]
    assert "speck" in detect(speck).reason
    stray = image.copy()
    stray[24:28, 24:28] = (128, 128, 128)
    assert "off-palette" in detect(stray).reason


def test_an_extra_object_fails_the_rules():
    rng = np.random.default_rng(7)
    for tag in GENEVAL_TAGS:
        for record in [r for r in RECORDS[tag] if r["include"][0]["count"] < 4][:4]:
            first, *rest = record["include"]
            crowded = sample_scene({**record, "include": [{**first, "count": first["count"] + 1}, *rest]}, rng)
            result = score_image(render(crowded), record)
            assert result.strict == 0.0 and result.partial < 1.0, record["prompt"]
            if tag == "counting":
                assert result.correct == 0.0


def test_detect_rejects_non_images():
    with pytest.raises(ValueError, match="uint8"):
        detect(np.zeros((32, 32), dtype=np.uint8))


# --- under-specified captions ---------------------------------------------------------------------

def test_underspecified_captions_stay_true_of_the_scene():
    rng = np.random.default_rng(8)
    modes = ("exact", "drop_color", "drop_position", "drop_object")
    for record, scene in scenes_of_every_tag(seed=9, per_tag=10):
        image = render(scene)
        for mode in modes:
            caption = underspecified_caption(record, rng, {"exact": 1e-9, mode: 1.0})
            assert score_image(image, PROMPTS[caption]).correct == 1.0, (record["prompt"], caption)


def test_caption_modes_drop_what_they_name():
    rng = np.random.default_rng(10)
    red_circle_blue_square = PROMPTS["a photo of a red circle and a blue square"]
    assert underspecified_caption(red_circle_blue_square, rng, {"drop_color": 1}) == \
        "a photo of a circle and a square"
    left = PROMPTS["a photo of a square left of a circle"]
    assert underspecified_caption(left, rng, {"drop_position": 1}) == "a photo of a square and a circle"
    assert underspecified_caption(PROMPTS["a photo of three triangles"], rng, {"drop_count": 1}) == \
        "a photo of some triangles"
    assert underspecified_caption(PROMPTS["a photo of a circle"], rng) == "a photo of a circle"


def test_caption_mix_errors_are_clear():
    rng = np.random.default_rng(11)
    with pytest.raises(ValueError, match="unknown caption modes"):
        underspecified_caption(PROMPTS["a photo of a circle"], rng, {"drop_shape": 1.0})
    with pytest.raises(ValueError, match="no weight"):
        underspecified_caption(PROMPTS["a photo of a circle"], rng, {"drop_color": 1.0})


def test_colors_vocabulary_matches_palette():
    assert set(COLORS) == set(PALETTE) and len(COLORS) >= 4


def test_mislabelled_captions_name_the_objects_but_are_wrong_about_the_scene():
    """Label noise for the base model's pretraining: a mislabelled caption is another record's prompt
    of the same tag that the strict detector rejects on a clean render of the scene."""
    rng = np.random.default_rng(3)
    records = {r["prompt"]: r for rs in all_records().values() for r in rs}
    for tag in LABEL_NOISE_TAGS:
        for record in all_records()[tag]:
            scene = sample_scene(record, rng)
            caption = mislabeled_caption(record, scene, rng)
            assert caption != record["prompt"] and records[caption]["tag"] == tag
            assert not score_image(render(scene), records[caption]).correct, (record["prompt"], caption)
            assert score_image(render(scene), record).correct


def test_noisy_caption_mislabels_the_configured_share_and_checks_its_input():
    rng = np.random.default_rng(4)
    record = all_records()["counting"][0]
    captions = [noisy_caption(record, sample_scene(record, rng), rng, {"counting": 0.3}, {"exact": 1.0})
                for _ in range(2000)]
    assert abs(np.mean([c != record["prompt"] for c in captions]) - 0.3) < 0.04
    single = all_records()["single_object"][0]
    assert noisy_caption(single, sample_scene(single, rng), rng, {"counting": 0.9}) == single["prompt"]
    with pytest.raises(ValueError, match="unknown tags"):
        noisy_caption(record, sample_scene(record, rng), rng, {"single_object": 0.5})
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\)"):
        noisy_caption(record, sample_scene(record, rng), rng, {"counting": 1.0})
