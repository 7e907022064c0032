"""Write the shapes world's prompt sets: assets/prompts/shapes_{train,test}.jsonl.

Deterministic in --seed. The whole prompt space of each GenEval tag is shuffled and split by prompt
text: the test set takes a fraction of each tag (at least one prompt, at most --max-test-per-tag, and
never the whole tag), the train set the rest, so RL is evaluated on prompts it never trained on while
the pretrained base model has seen every caption.

The split holds out phrasings, never a whole scene that has another phrasing: "a circle above a square"
and "a square below a circle" ask for one image, so at most one of them is held out (likewise "a red
circle and a blue square" / "a blue square and a red circle"). Holding out both left the policy a
training set that showed each object pair one way up only; RL learned the pair's layout from the
prompts and test position fell 0.39 -> 0.28 while training position rose (docs/results.md). Flow-GRPO's
GenEval training prompts come from the same generator as the test prompts, so its scenes overlap too.

    python -m scripts.make_shapes_prompts [--seed 0] [--test-fraction 0.33] [--out-dir assets/prompts]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rewards.geneval_rules import GENEVAL_TAGS, RELATIONS
from rewards.prompts import load_prompts
from rewards.shapes.world import COLORS, SHAPES, all_records

# "B right of A" is "A left of B"; "B below A" is "A above B".
_MIRROR = {"right of": "left of", "below": "above"}
assert set(_MIRROR) | set(_MIRROR.values()) == set(RELATIONS)


def scene_key(record: dict) -> tuple:
    """What an image must show, whatever the wording: the objects (class, count, colour), the relations
    with mirrored words turned round, and the exclusions. Two prompts with one key are one scene."""
    objects = [(o["class"], o["count"], o.get("color")) for o in record["include"]]
    relations = set()
    for obj, spec in zip(objects, record["include"], strict=True):
        if "position" in spec:
            word, anchor = spec["position"]
            a, b = obj, objects[anchor]
            if word in _MIRROR:
                a, b, word = b, a, _MIRROR[word]
            relations.add((a, word, b))
    excluded = frozenset((e["class"], e["count"]) for e in record.get("exclude", []))
    return frozenset(objects), frozenset(relations), excluded


def split_tag(records: list[dict], rng: np.random.Generator, fraction: float, cap: int) -> tuple[list, list]:
    """(train, test) of one tag's records; both non-empty whenever the tag has two prompts. Walks a
    random order and holds a prompt out unless that would hold out every phrasing of its scene."""
    order = rng.permutation(len(records))
    n_test = min(cap, max(1, round(fraction * len(records))), len(records) - 1)
    phrasings: dict[tuple, int] = {}
    for record in records:
        phrasings[scene_key(record)] = phrasings.get(scene_key(record), 0) + 1
    held: dict[tuple, int] = {}
    test_ids: list[int] = []
    for i in order:
        key = scene_key(records[i])
        if len(test_ids) == n_test:
            break
        if phrasings[key] > 1 and held.get(key, 0) + 1 == phrasings[key]:
            continue
        held[key] = held.get(key, 0) + 1
        test_ids.append(int(i))
    test = [records[i] for i in sorted(test_ids)]
    train = [records[i] for i in range(len(records)) if i not in set(test_ids)]
    return train, test


def split(seed: int, fraction: float, cap: int) -> tuple[list[dict], list[dict]]:
    rng = np.random.default_rng(seed)
    space = all_records()
    train, test = [], []
    for tag in GENEVAL_TAGS:
        tag_train, tag_test = split_tag(space[tag], rng, fraction, cap)
        train += tag_train
        test += tag_test
    return train, test


def write_jsonl(records: list[dict], path: Path) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-fraction", type=float, default=0.33, help="share of each tag held out")
    parser.add_argument("--max-test-per-tag", type=int, default=50)
    parser.add_argument("--out-dir", type=Path, default=Path("assets/prompts"))
    args = parser.parse_args()
    train, test = split(args.seed, args.test_fraction, args.max_test_per_tag)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, records in (("shapes_train.jsonl", train), ("shapes_test.jsonl", test)):
        path = args.out_dir / name
        write_jsonl(records, path)
        load_prompts(path, classes=SHAPES, colors=COLORS)
        counts = {tag: sum(r["tag"] == tag for r in records) for tag in GENEVAL_TAGS}
        print(f"{path}: {len(records)} prompts {counts}")


if __name__ == "__main__":
    main()
