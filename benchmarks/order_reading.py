"""Does the policy read word order? The relation and colour-binding prompts scored against themselves and
against their role-swapped counterparts.

    python benchmarks/order_reading.py [--config configs/shapes_nft.yaml] [--checkpoint RUN_OR_CHECKPOINT]
                                       [--images-per-prompt 24] [--split test] [--output FILE.json]
                                       [--against EARLIER.json]

"a circle left of a square" and "a square left of a circle" use the same words; so do "a red circle and a
blue square" and "a blue circle and a red square". Each image sampled for a prompt (the evaluation's
deterministic ODE, fixed seeds) is scored by the strict detector against its prompt and against the
counterpart with the two objects' roles swapped. A policy that ignores the order draws the same images
for both, so both verdicts are equally likely: the difference is ~0. A policy that reads the order
scores high against its prompt and ~0 against the counterpart. The difference, paired over the same
images with its 95% interval, is how much the prompt's order steers the image; compare the base model
(no --checkpoint) with a trained run to see whether RL taught it: `--against` the base's `--output` gives
the paired change of the reading, image by image.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from cluster.config import REPO_ROOT, load_config  # noqa: E402

ORDER_TAGS = ("position", "color_attr")


def role_swapped(record: dict) -> dict:
    """The record whose prompt names the same objects with their roles exchanged: position 'A rel B' ->
    'B rel A' (the relation clause moves to the other object); color_attr: the two colours swapped.
    Only the scoring fields change (the prompt text is not needed to score)."""
    tag, include = record.get("tag"), record.get("include", [])
    if tag not in ORDER_TAGS or len(include) != 2:
        raise ValueError(f"role_swapped: needs a position or color_attr record of two objects, got {record}")
    out = copy.deepcopy(record)
    first, second = out["include"]
    if tag == "position":
        # GenEval's form: the target first, then the object whose clause points at it (rewards.shapes.world)
        first["class"], second["class"] = second["class"], first["class"]
    else:
        first["color"], second["color"] = second["color"], first["color"]
    return out


def seeds_for(prompt_index: int, count: int, seed: int) -> list[int]:
    """Fixed sampling seeds per prompt, the same for every policy measured (the comparison is paired)."""
    rng = np.random.default_rng([seed, prompt_index])
    return [int(s) for s in rng.integers(0, 2**62, size=count)]


def order_verdicts(images: np.ndarray, record: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the detector's verdict against the record, and against its role-swapped counterpart."""
    from rewards.shapes import score_image

    swapped = role_swapped(record)
    own = np.array([score_image(im, record).correct for im in images], dtype=np.float64)
    other = np.array([score_image(im, swapped).correct for im in images], dtype=np.float64)
    return own, other


def summarize(own: np.ndarray, other: np.ndarray, prompt_index: np.ndarray, tags: np.ndarray) -> dict:
    """Per tag: accuracy against the prompt, against the counterpart, and their paired difference, each
    with its 95% interval (images resampled within each tag, prompts fixed)."""
    from cluster.eval_stats import bootstrap

    parts = {"prompt": own, "swapped": other, "difference": own - other}
    est = {name: _per_tag(bootstrap(values, prompt_index, tags)) for name, values in parts.items()}
    return {tag: {name: e[tag] for name, e in est.items()} for tag in est["prompt"]}


def _per_tag(estimates: dict) -> dict:
    """cluster.eval_stats.bootstrap's Estimates as JSON: tag -> {mean, ci}."""
    return {tag: {"mean": e.value, "ci": [e.low, e.high]} for tag, e in estimates.items()}


def sample_verdicts(cfg, records: list[dict], images_per_prompt: int, weights: dict | None,
                    seed: int = 0) -> dict[str, list]:
    """Sample every record's images with the evaluation sampler (the base model, or `weights` loaded) and
    score each against its prompt and the role-swapped one: per image its prompt, prompt index, tag and
    the two verdicts (what --output keeps and --against pairs)."""
    from rollout.worker import RolloutWorker

    worker = RolloutWorker(cfg.model, cfg.sampling, algorithm=cfg.algorithm, torch_threads=2)  # a one-off measurement: both cores
    if weights is not None:
        worker.load_weights(weights, version=1)
    out: dict[str, list] = {"prompt": [], "prompt_index": [], "tag": [], "own": [], "swapped": []}
    for i, record in enumerate(records):
        images = worker.evaluate([record["prompt"]], [seeds_for(i, images_per_prompt, seed)])
        own, swapped = order_verdicts(images, record)
        out["prompt"] += [record["prompt"]] * len(own)
        out["prompt_index"] += [i] * len(own)
        out["tag"] += [record["tag"]] * len(own)
        out["own"] += own.tolist()
        out["swapped"] += swapped.tolist()
        print(f"[order] {i + 1}/{len(records)} {record['prompt']!r}: {own.mean():.2f} own, {swapped.mean():.2f} "
              "swapped", flush=True)
    return out


def summary_of(verdicts: dict[str, list]) -> dict:
    return summarize(np.asarray(verdicts["own"]), np.asarray(verdicts["swapped"]),
                     np.asarray(verdicts["prompt_index"]), np.asarray(verdicts["tag"], dtype=object))


def measure(cfg, records: list[dict], images_per_prompt: int, weights: dict | None, seed: int = 0) -> dict:
    """`sample_verdicts`, summarized per tag."""
    return summary_of(sample_verdicts(cfg, records, images_per_prompt, weights, seed))


def paired_change(after: dict[str, list], before: dict[str, list]) -> dict:
    """How much a policy's order reading (against-prompt minus against-swap) changed from another's,
    paired image by image: both must have sampled the same prompts with the same seeds."""
    from cluster.eval_stats import bootstrap

    if after["prompt"] != before["prompt"]:
        raise ValueError("--against: the two measurements sampled different prompts or numbers of images "
                         "(use the same --split, --images-per-prompt and config prompts)")
    reading = {name: np.asarray(v["own"]) - np.asarray(v["swapped"]) for name, v in (("after", after), ("before", before))}
    return _per_tag(bootstrap(reading["after"] - reading["before"], np.asarray(after["prompt_index"]),
                              np.asarray(after["tag"], dtype=object)))


def table(summary: dict) -> str:
    def ci(d: dict, signed: bool = False) -> str:
        f = "+.3f" if signed else ".3f"
        return f"{d['mean']:{f}} [{d['ci'][0]:{f}}, {d['ci'][1]:{f}}]"

    lines = ["| tag | against the prompt | against the role-swapped prompt | difference (paired) |", "|---|---|---|---|"]
    lines += [f"| {tag} | {ci(d['prompt'])} | {ci(d['swapped'])} | {ci(d['difference'], signed=True)} |"
              for tag, d in summary.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO_ROOT / "configs" / "shapes_nft.yaml"))
    p.add_argument("--checkpoint", help="a run directory (its newest checkpoint) or a checkpoint folder; none: the base")
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--images-per-prompt", type=int, default=24)
    p.add_argument("--output", help="write the summary and every image's verdicts here as JSON")
    p.add_argument("--against", help="an earlier --output of another policy (same prompts and seeds): print the "
                   "paired change of the order reading from it")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = p.parse_args(argv)
    from safetensors.torch import load_file

    from cluster import checkpoints
    from rewards.prompts import load_prompts

    cfg = load_config(args.config, args.overrides)
    path = cfg.data.test_prompts if args.split == "test" else cfg.data.train_prompts
    records = [r for r in load_prompts(REPO_ROOT / path) if r.get("tag") in ORDER_TAGS]
    if not records:
        raise SystemExit(f"error: {path} has no {' or '.join(ORDER_TAGS)} prompts")
    weights = None
    if args.checkpoint:
        file = checkpoints.evaluation_weights_file(args.checkpoint, ema=cfg.learner.ema_decay is not None)
        weights = load_file(str(file))
    verdicts = sample_verdicts(cfg, records, args.images_per_prompt, weights)
    summary = summary_of(verdicts)
    print(table(summary))
    if args.output:
        Path(args.output).write_text(json.dumps({"checkpoint": args.checkpoint, "split": args.split,
                                                 "images_per_prompt": args.images_per_prompt, "tags": summary,
                                                 "images": verdicts}))
    if args.against:
        change = paired_change(verdicts, json.loads(Path(args.against).read_text())["images"])
        print(f"change of the order reading from {args.against} (paired, same images):")
        print("\n".join(f"- {tag}: {d['mean']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]" for tag, d in change.items()))
        summary = {**summary, "change": change}
    return summary


if __name__ == "__main__":
    main()
