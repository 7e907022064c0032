"""The shapes world: a procedural GenEval of flat coloured shapes on a plain background.

Vocabulary, a hard-edged renderer, GenEval-schema prompt records for the six tags, a sampler of
scenes that satisfy a record (pretraining pairs) and under-specified captions (so the pretrained base
model is deliberately imperfect and RL has room). Coordinates are pixels, y grows downwards.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from rewards.geneval_rules import RELATIONS, relative_position

SHAPES = ("circle", "square", "triangle")
# Corners of the RGB cube: every pair of palette colours (background included) is >= 255 apart, so a
# detector can snap generated colours within a wide radius without ambiguity.
PALETTE = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
}
COLORS = tuple(PALETTE)
BACKGROUND = (0, 0, 0)
IMAGE_SIZE = 32
COUNTS = {2: "two", 3: "three", 4: "four"}
# Object sides at 32 px (scaled with the image). Fill ratio and template IoU only separate the shapes
# from ~9 px up; 12 px leaves room for a generated shape to lose a 1 px edge and still read.
OBJECT_SIDES = (12, 12)
# Top-left corners lie on a lattice of LATTICE px starting at LATTICE_OFFSET (at 32 px: 2, 6, ..., 18).
# The lattice is the 4x latent grid of the embedded model's VAE, so every object of a given shape and
# colour has the same sub-cell phase and hence one latent pattern: a 2M-parameter model learns 12
# patterns to place, not 12 x 16 phases x sizes (with free 1 px placement and sides 10-13 its VAE
# round trip read only 0.75 of clean renders and its samples were blobs).
LATTICE = 4
LATTICE_OFFSET = 2
GAP = 2  # min empty pixels between two objects' boxes: their 1 px edge fringes never merge
BORDER = 1  # min empty pixels between an object and the image edge

CAPTION_MODES = ("exact", "drop_color", "drop_position", "drop_object", "drop_count")
DEFAULT_CAPTION_MIX = {"exact": 0.5, "drop_color": 0.2, "drop_position": 0.2, "drop_object": 0.1}


@dataclass(frozen=True)
class ShapeObject:
    """One object: shape class, colour name, top-left corner (x, y) and side, all in pixels."""

    shape: str
    color: str
    x: int
    y: int
    size: int

    @property
    def box(self) -> tuple[float, float, float, float]:
        """xyxy with the far edges exclusive, as a detector reports it."""
        return (float(self.x), float(self.y), float(self.x + self.size), float(self.y + self.size))

    @property
    def center(self) -> tuple[float, float]:
        """(x, y) of the box centre, the point GenEval's relative-position rule compares."""
        return (self.x + self.size / 2, self.y + self.size / 2)


@dataclass(frozen=True)
class Scene:
    """What one image shows; objects never overlap (see GAP)."""

    objects: tuple[ShapeObject, ...]


def shape_mask(shape: str, height: int, width: int) -> np.ndarray:
    """Ideal boolean mask of `shape` filling a height x width box, sampled at pixel centres.

    Each shape touches all four sides of its box (the triangle points up, its apex row is 1-2 px),
    so a detector's tight box of a clean render is the render box and this mask matches exactly.
    """
    v = (np.arange(height) + 0.5)[:, None]
    u = (np.arange(width) + 0.5)[None, :]
    if shape == "square":
        return np.ones((height, width), dtype=bool)
    if shape == "circle":
        return ((u - width / 2) / (width / 2)) ** 2 + ((v - height / 2) / (height / 2)) ** 2 <= 1.0
    if shape == "triangle":
        half_width = (np.arange(height)[:, None] + 1) / height * width / 2
        return np.abs(u - width / 2) <= half_width + 1e-9
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 [size, size, 3]: the palette colours with hard edges (no anti-aliasing) on BACKGROUND."""
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for obj in scene.objects:
        if obj.x < 0 or obj.y < 0 or obj.x + obj.size > size or obj.y + obj.size > size:
            raise ValueError(f"{obj} does not fit a {size} px image")
        if obj.color not in PALETTE:
            raise ValueError(f"unknown colour {obj.color!r}; known: {COLORS}")
        window = image[obj.y:obj.y + obj.size, obj.x:obj.x + obj.size]
        window[shape_mask(obj.shape, obj.size, obj.size)] = PALETTE[obj.color]
    return image


# --- prompt records in GenEval's metadata schema ------------------------------------------------

def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun(shape: str, color: str | None = None) -> str:
    phrase = f"{color} {shape}" if color else shape
    return f"{_article(phrase)} {phrase}"


def _record(tag: str, include: list[dict], prompt: str, exclude: list[dict] | None = None) -> dict:
    return {"tag": tag, "include": include, "exclude": exclude or [], "prompt": f"a photo of {prompt}"}


def single_object(shape: str) -> dict:
    return _record("single_object", [{"class": shape, "count": 1}], _noun(shape))


def two_object(a: str, b: str) -> dict:
    include = [{"class": a, "count": 1}, {"class": b, "count": 1}]
    return _record("two_object", include, f"{_noun(a)} and {_noun(b)}")


def counting(shape: str, count: int) -> dict:
    """GenEval's counting clause: at least `count` and fewer than `count + 1`."""
    return _record("counting", [{"class": shape, "count": count}], f"{COUNTS[count]} {shape}s",
                   exclude=[{"class": shape, "count": count + 1}])


def colors(shape: str, color: str) -> dict:
    return _record("colors", [{"class": shape, "count": 1, "color": color}], _noun(shape, color))


def position(a: str, relation: str, b: str) -> dict:
    """'a photo of A <relation> B': GenEval lists the target B first and points A's clause at it."""
    include = [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [relation, 0]}]
    return _record("position", include, f"{_noun(a)} {relation} {_noun(b)}")


# A relation's mirror (same objects, same order, the other side) and its axis.
MIRROR = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
AXIS = {"left of": "horizontal", "right of": "horizontal", "above": "vertical", "below": "vertical"}


def mirrored_position(record: Mapping) -> dict:
    """The position record with its relation mirrored (same objects, same order)."""
    target, subject = record["include"]
    return position(subject["class"], MIRROR[subject["position"][0]], target["class"])


def color_attr(a: str, color_a: str, b: str, color_b: str) -> dict:
    include = [{"class": a, "count": 1, "color": color_a}, {"class": b, "count": 1, "color": color_b}]
    return _record("color_attr", include, f"{_noun(a, color_a)} and {_noun(b, color_b)}")


def all_records() -> dict[str, list[dict]]:
    """The whole prompt space per tag. Multi-object tags use two distinct classes (and color_attr two
    distinct colours), as GenEval does: its rules judge a class's most confident objects, so two
    clauses on one class would both read the same object."""
    pairs = list(itertools.permutations(SHAPES, 2))
    color_pairs = list(itertools.permutations(COLORS, 2))
    return {
        "single_object": [single_object(s) for s in SHAPES],
        "two_object": [two_object(a, b) for a, b in pairs],
        "counting": [counting(s, n) for s in SHAPES for n in COUNTS],
        "colors": [colors(s, c) for s in SHAPES for c in COLORS],
        "position": [position(a, r, b) for a, b in pairs for r in RELATIONS],
        "color_attr": [color_attr(a, ca, b, cb) for a, b in pairs for ca, cb in color_pairs],
    }


# --- scenes that satisfy a record ---------------------------------------------------------------

def _side_range(size: int) -> tuple[int, int]:
    low, high = OBJECT_SIDES
    return round(low * size / IMAGE_SIZE), round(high * size / IMAGE_SIZE)


def _free_corners(side: int, placed: list[ShapeObject], size: int) -> np.ndarray:
    """[n, 2] lattice corners (x, y) where a `side` px object keeps BORDER to the image edge and
    GAP to every placed object's box."""
    step, first = round(LATTICE * size / IMAGE_SIZE), max(BORDER, round(LATTICE_OFFSET * size / IMAGE_SIZE))
    axis = np.arange(first, size - BORDER - side + 1, step)
    xs, ys = np.meshgrid(axis, axis)
    free = np.ones(xs.shape, dtype=bool)
    for o in placed:
        free &= ((xs + side + GAP <= o.x) | (o.x + o.size + GAP <= xs)
                 | (ys + side + GAP <= o.y) | (o.y + o.size + GAP <= ys))
    return np.stack([xs[free], ys[free]], axis=1)


def _place(specs: list[tuple[str, str]], rng: np.random.Generator, size: int) -> list[ShapeObject] | None:
    """Objects for (shape, colour) specs, each at a uniformly drawn free corner; None at a dead end."""
    low, high = _side_range(size)
    placed: list[ShapeObject] = []
    for shape, color in specs:
        side = int(rng.integers(low, high + 1))
        corners = _free_corners(side, placed, size)
        if not len(corners):
            return None
        x, y = (int(v) for v in corners[rng.integers(len(corners))])
        placed.append(ShapeObject(shape, color, x, y, side))
    return placed


def _positions_hold(groups: list[list[ShapeObject]], metadata: Mapping) -> bool:
    for req, group in zip(metadata["include"], groups, strict=True):
        if "position" in req:
            relation, target = req["position"]
            if any(relation not in relative_position(o.box, t.box) for o in group for t in groups[target]):
                return False
    return True


def sample_scene(metadata: Mapping, rng: np.random.Generator, size: int = IMAGE_SIZE) -> Scene:
    """A random scene satisfying `metadata` exactly: each include clause's count of its class, its
    colour if given (a random colour otherwise), its relation by GenEval's own rule, nothing else."""
    specs_per_group = [
        [(req["class"], req.get("color") or str(rng.choice(COLORS))) for _ in range(req["count"])]
        for req in metadata["include"]
    ]
    for _ in range(500):
        placed = _place([spec for group in specs_per_group for spec in group], rng, size)
        if placed is None:
            continue
        groups, start = [], 0
        for group in specs_per_group:
            groups.append(placed[start:start + len(group)])
            start += len(group)
        if _positions_hold(groups, metadata):
            return Scene(tuple(placed))
    raise RuntimeError(f"no scene of {size} px found for {metadata['prompt']!r}")


def mirror_scene(scene: Scene, relation: str) -> Scene:
    """A position scene (target first, as `sample_scene` places it) with the two objects' coordinates on
    `relation`'s axis swapped: the subject now stands in the mirrored relation to the target (GenEval's rule
    compares box centres, and both sides are equal), the other axis and every gap are unchanged, so the scene
    stays on the lattice and nothing overlaps."""
    target, subject = scene.objects
    axis = "x" if AXIS[relation] == "horizontal" else "y"
    return Scene((replace(target, **{axis: getattr(subject, axis)}), replace(subject, **{axis: getattr(target, axis)})))


# --- under-specified captions for pretraining ---------------------------------------------------

def _weaker_captions(metadata: Mapping) -> dict[str, list[str]]:
    """Captions still true of any scene sampled for `metadata`, keyed by the caption mode."""
    tag, include = metadata["tag"], metadata["include"]
    options: dict[str, list[str]] = {"exact": [metadata["prompt"]]}
    if tag == "colors":
        options["drop_color"] = [single_object(include[0]["class"])["prompt"]]
    if tag == "color_attr":
        options["drop_color"] = [two_object(include[0]["class"], include[1]["class"])["prompt"]]
    if tag == "position":
        a, b = include[1]["class"], include[0]["class"]
        options["drop_position"] = [two_object(a, b)["prompt"]]
    if tag in ("two_object", "position", "color_attr"):
        options["drop_object"] = [
            (colors(req["class"], req["color"]) if "color" in req else single_object(req["class"]))["prompt"]
            for req in include
        ]
    if tag == "counting":
        options["drop_count"] = [f"a photo of some {include[0]['class']}s"]
    return options


def underspecified_caption(metadata: Mapping, rng: np.random.Generator,
                           mix: Mapping[str, float] = DEFAULT_CAPTION_MIX) -> str:
    """A pretraining caption for a scene drawn by `sample_scene(metadata)`.

    `mix` weighs the modes of CAPTION_MODES: 'exact' (the record's prompt), 'drop_color' (colours
    left out), 'drop_position' (the relation left out: 'a photo of A and B'), 'drop_object' (only one
    of the objects named), 'drop_count' ('a photo of some circles'). Modes that do not apply to the
    record's tag are skipped and the rest renormalised, so a single_object record is always exact.
    Training on weaker captions leaves the model unsure of what they drop: that is the gap RL closes.
    """
    unknown = set(mix) - set(CAPTION_MODES)
    if unknown:
        raise ValueError(f"unknown caption modes {sorted(unknown)}; known: {CAPTION_MODES}")
    options = _weaker_captions(metadata)
    modes = [m for m in options if mix.get(m, 0.0) > 0]
    if not modes:
        raise ValueError(f"caption mix {dict(mix)} gives no weight to any mode of tag {metadata['tag']!r}")
    weights = np.array([mix[m] for m in modes], dtype=np.float64)
    mode = modes[int(rng.choice(len(modes), p=weights / weights.sum()))]
    captions = options[mode]
    return captions[int(rng.integers(len(captions)))]


# --- mislabelled captions (label noise) for pretraining -----------------------------------------

# Tags whose captions can be wrong about one choice while naming the right objects, and what the
# wrong caption changes: the relation, the count, the colour binding, the colour.
LABEL_NOISE_TAGS = ("position", "counting", "color_attr", "colors")


def mislabeled_caption(metadata: Mapping, scene: Scene, rng: np.random.Generator) -> str:
    """A caption that names the scene's objects but is wrong about one choice the record makes.

    position: a relation that does not hold between the scene's two objects (by GenEval's own rule,
    so 'left of' is never offered for a scene that is also left-of while mainly above); counting:
    another count; color_attr: the two colours swapped (a binding error); colors: another colour.
    A model pretrained on a share q of such captions renders every object well but puts only about
    1 - q of its mass on the correct choice: SD3.5-M's kind of GenEval failure, which RL fixes.
    """
    tag, include = metadata["tag"], metadata["include"]
    if tag == "position":
        target, subject = scene.objects  # sample_scene places include[0] (the target B) first
        holds = relative_position(subject.box, target.box)
        wrong = [r for r in RELATIONS if r not in holds]
        return position(include[1]["class"], wrong[int(rng.integers(len(wrong)))], include[0]["class"])["prompt"]
    if tag == "counting":
        wrong = [n for n in COUNTS if n != include[0]["count"]]
        return counting(include[0]["class"], wrong[int(rng.integers(len(wrong)))])["prompt"]
    if tag == "color_attr":
        a, b = include
        return color_attr(a["class"], b["color"], b["class"], a["color"])["prompt"]
    if tag == "colors":
        wrong = [c for c in COLORS if c != include[0]["color"]]
        return colors(include[0]["class"], wrong[int(rng.integers(len(wrong)))])["prompt"]
    raise ValueError(f"tag {tag!r} has no mislabelled captions; tags that do: {LABEL_NOISE_TAGS}")


def noisy_caption(metadata: Mapping, scene: Scene, rng: np.random.Generator,
                  label_noise: Mapping[str, float], mix: Mapping[str, float] = DEFAULT_CAPTION_MIX) -> str:
    """With probability label_noise[tag] a mislabelled caption, else an under-specified one (`mix`)."""
    unknown = set(label_noise) - set(LABEL_NOISE_TAGS)
    if unknown:
        raise ValueError(f"label noise for unknown tags {sorted(unknown)}; known: {LABEL_NOISE_TAGS}")
    q = label_noise.get(metadata["tag"], 0.0)
    if not 0.0 <= q < 1.0:
        raise ValueError(f"label noise {q} for tag {metadata['tag']!r} must lie in [0, 1)")
    if q > 0 and rng.random() < q:
        return mislabeled_caption(metadata, scene, rng)
    return underspecified_caption(metadata, rng, mix)
