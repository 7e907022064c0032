"""Evaluation: deterministic ODE images (T_eval steps) from seeds fixed per (prompt, image), scored by
the configured reward models, written image by image so two evaluations can be compared pairwise.

A plan (`plan_evaluation`) fixes what is sampled: with `data.eval_images_per_tag`, every tag of a
GenEval-style prompt file gets about that many images whatever its number of prompts (more images per
prompt where a tag has few prompts), since GenEval's `overall` is the mean over tags and one prompt of
a tag with one prompt would otherwise carry a sixth of it. Image j of prompt i always starts from the
noise of seed derive_seed(data.eval_seed, "eval", split, i, j), so every evaluation of a checkpoint
with the same plan is paired image by image with every other.

Each evaluation `<name>` writes:
- `<name>_images.jsonl`: one row per image (prompt index, tag, prompt, image index, seed, every
  scorer's reward and diagnostics, GenEval's verdicts among them);
- `<name>.json`: accuracy per tag and `overall` (GenEval's mean over tags), each with two bootstrap 95%
  intervals (`cluster.eval_stats`): `ci` for this fixed prompt set (seed noise; the one sized to
  data.eval_max_halfwidth) and `ci_prompts` (prompts, then images); each scorer's mean reward with its
  interval, the plan's fingerprint and the per-image file's sha256 (so a truncated or swapped file is caught);
- `<name>_grid.png`: a few images of a few prompts per tag, captioned (cluster.plots): the prompt of each
  row, each image's verdict, and a title with the accuracy (a video as a strip of 4 of its frames);
- videos only, `<name>_videos/<name>_<k>.gif`: the same captioned grid animated, one GIF per pictured prompt.
While it runs, an evaluation prints a few progress lines (images done, elapsed, ETA; cluster.metrics.Progress).
`compare_evaluations` pairs two evaluations with the same fingerprint and gives the difference per tag
and overall with a paired bootstrap interval. The trainer (through its actors) and `launch.py eval`
(in process) both evaluate through `evaluate` and `sample_sharded`: one path, the same numbers.
Through actors the images stay in the object store (common/data_plane.py): each worker's share goes to
the scorers by reference, and only the images the pictures show (`PICTURED`) come back to the driver;
in process every image is at hand.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cluster.eval_stats import Estimate, bootstrap, verdict, worst_case_halfwidths
from cluster.metrics import Progress
from cluster.plots import (
    Caption,
    animated_grid,
    animated_grids,
    before_after_grid,
    captioned_grid,
    stills,
    write_png,
)
from cluster.plots import display_scale as display_scale  # re-exported: callers import the grid's pieces here
from cluster.plots import image_grid as image_grid
from cluster.plots import save_png as save_png
from models.seeding import derive_seed
from rewards.base import ScoreResult

if TYPE_CHECKING:
    from common.data_plane import EvalShare

# (prompts, seeds per prompt, image indices to bring back: the pictures') -> the images, in shares
SampleFn = Callable[[list[str], list[list[int]], list[int]], "SampledImages"]
# [(images or their ObjectRef, prompts, metadata) per share] -> per share, scorer name -> per-image results
ScoreFn = Callable[[list[tuple]], list[dict[str, ScoreResult]]]

EVAL_SEED = 1234
ACCURACY_DIAGNOSTIC = "correct"  # GenEval's official per-image verdict (rewards.geneval_rules)


class EvaluationFileError(ValueError):
    """A per-image evaluation file that is missing, truncated, from another run, or not comparable."""


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class EvalPlan:
    """What an evaluation samples: the prompt records, and one seed per image of each."""

    split: str  # "test", "train" (the held-out check on training prompts) or "probe"
    records: tuple[dict, ...]
    seeds: tuple[tuple[int, ...], ...]

    @property
    def num_images(self) -> int:
        return sum(len(s) for s in self.seeds)

    def tags(self) -> list[str]:
        return [str(r.get("tag", "all")) for r in self.records]

    def images_per_tag(self) -> dict[str, int]:
        counts: Counter = Counter()
        for tag, seeds in zip(self.tags(), self.seeds, strict=True):
            counts[tag] += len(seeds)
        return dict(sorted(counts.items()))

    def fingerprint(self) -> str:
        """sha256 of (split, every prompt with its seeds): equal fingerprints pair image by image."""
        payload = [self.split, [[r["prompt"], list(s)] for r, s in zip(self.records, self.seeds, strict=True)]]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()

    def image_index(self, per_prompt: int, prompts_per_tag: int) -> list[int]:
        """Images (prompt-major indices) for a picture: the first `per_prompt` images of the first
        `prompts_per_tag` prompts of each tag (tags in order of appearance)."""
        starts = np.cumsum([0] + [len(s) for s in self.seeds])
        taken: dict[str, int] = defaultdict(int)
        out = []
        for i, tag in enumerate(self.tags()):
            if taken[tag] < prompts_per_tag:
                taken[tag] += 1
                out.extend(range(starts[i], starts[i] + min(per_prompt, len(self.seeds[i]))))
        return out


def images_per_record(records: Sequence[dict], images_per_tag: int | None, images_per_prompt: int) -> list[int]:
    """Images of each record: ceil(images_per_tag / prompts of its tag) when every record is tagged and
    `images_per_tag` is set, else `images_per_prompt` each."""
    if images_per_tag and records and all("tag" in r for r in records):
        per_tag = Counter(r["tag"] for r in records)
        return [math.ceil(images_per_tag / per_tag[r["tag"]]) for r in records]
    return [images_per_prompt] * len(records)


def plan_evaluation(records: Sequence[dict], *, split: str, seed: int, images_per_tag: int | None,
                    images_per_prompt: int) -> EvalPlan:
    if not records:
        raise ValueError(f"evaluation ({split}): no prompts")
    counts = images_per_record(records, images_per_tag, images_per_prompt)
    seeds = tuple(tuple(derive_seed(seed, "eval", split, i, j) for j in range(n)) for i, n in enumerate(counts))
    return EvalPlan(split, tuple(dict(r) for r in records), seeds)


def check_power(plan: EvalPlan, max_halfwidth: float | None, max_halfwidth_overall: float | None,
                key: str = "data.eval_images_per_tag") -> dict[str, float]:
    """Refuse a plan too small to meet its own interval targets, naming the key that sizes it.
    Returns the worst-case (p = 1/2) half-widths."""
    worst = worst_case_halfwidths(plan.images_per_tag())
    problems = [f"{t} +-{w:.3f} > {max_halfwidth}" for t, w in worst.items()
                if t != "overall" and max_halfwidth is not None and w > max_halfwidth]
    if max_halfwidth_overall is not None and worst["overall"] > max_halfwidth_overall:
        problems.append(f"overall +-{worst['overall']:.3f} > {max_halfwidth_overall}")
    if problems:
        from cluster.config import ConfigError

        tags = len(worst) - 1
        bounds = [b for b in (max_halfwidth, max_halfwidth_overall and max_halfwidth_overall * math.sqrt(tags)) if b]
        need = math.ceil((0.98 / min(bounds)) ** 2)  # 1.96 * 0.5 / sqrt(n) <= bound, per tag
        raise ConfigError(
            f"the {plan.split} evaluation ({plan.images_per_tag()} images per tag) cannot meet its interval "
            f"targets: {', '.join(problems)} (worst case p = 1/2). Raise {key} (to about {need}) or loosen "
            "data.eval_max_halfwidth / data.eval_max_halfwidth_overall"
        )
    return worst


SPLITS = ("test", "train", "probe")


def plan_for(cfg, split: str) -> EvalPlan:
    """The evaluation plan a config defines for `split`: 'test' (data.test_prompts, the reported
    accuracy), 'train' (the held-out check: training prompts, evaluation seeds) or 'probe' (the
    training monitor's small fixed set of test prompts). Checks the plan's power (data.eval_max_halfwidth*)."""
    from cluster.config import resolve
    from rewards.prompts import load_prompts

    d = cfg.data
    if split == "test":
        records = load_prompts(resolve(d.test_prompts))[: d.eval_num_prompts]
        plan = plan_evaluation(records, split=split, seed=d.eval_seed, images_per_tag=d.eval_images_per_tag,
                               images_per_prompt=d.eval_images_per_prompt)
        check_power(plan, d.eval_max_halfwidth, d.eval_max_halfwidth_overall)
        return plan
    if split == "train":
        if not d.eval_train_images_per_tag:
            raise ValueError("the held-out training-prompt check is off (data.eval_train_images_per_tag is 0)")
        records = load_prompts(resolve(d.train_prompts))
        return plan_evaluation(records, split=split, seed=d.eval_seed, images_per_tag=d.eval_train_images_per_tag,
                               images_per_prompt=1)
    if split == "probe":
        records = load_prompts(resolve(d.test_prompts))[: d.eval_num_prompts]
        return plan_evaluation(records, split=split, seed=d.eval_seed,
                               images_per_tag=cfg.logging.probe_images_per_tag, images_per_prompt=1)
    raise ValueError(f"unknown evaluation split {split!r}; known: {SPLITS}")


# ----------------------------------------------------------------------------- sampling


# The images any picture of an evaluation shows: its grid's. The trainer's before/after figure (at most 4
# per prompt) and the probe's grid (4 images of 1 prompt per tag) show a subset.
PICTURED = {"per_prompt": 8, "prompts_per_tag": 2}


@dataclass
class SampledImages:
    """What a sampler returns: the workers' shares (common.data_plane.EvalShare: all their images, or
    their ObjectRef, and the kept ones inline) and, per share, the plan's (prompt-major) index of each of
    its images, in share order."""

    shares: list[EvalShare]
    rows: list[list[int]]

    @property
    def num_images(self) -> int:
        return sum(len(r) for r in self.rows)

    def kept(self) -> dict[int, np.ndarray]:
        """The images at hand, by plan index."""
        return {rows[k]: image for share, rows in zip(self.shares, self.rows, strict=True) for k, image in share.kept.items()}


def sample_sharded(workers: Sequence, prompts: list[str], seeds: list[list[int]], keep: Sequence[int],
                   call: Callable, gather: Callable = lambda results: results) -> SampledImages:
    """Sample prompts round-robin over workers. `call(worker, prompts, seeds, keep)` starts a worker's
    share (an actor's `.remote`, or an in-process call) and returns its EvalShare, `keep` being the share's
    rows among the plan's images `keep`; `gather` waits for all shares (`ray.get` for actors): the trainer
    and `launch.py eval` differ only in these two."""
    n = len(workers)
    starts = np.cumsum([0] + [len(s) for s in seeds])
    rows = [[int(k) for i in range(a, len(prompts), n) for k in range(starts[i], starts[i + 1])]
            for a in range(min(n, len(prompts)))]
    wanted = set(keep)
    calls = [call(workers[a], prompts[a::n], seeds[a::n], [k for k, r in enumerate(share) if r in wanted])
             for a, share in enumerate(rows)]
    return SampledImages(gather(calls), rows)


def in_plan_order(per_share: list[dict[str, ScoreResult]], rows: list[list[int]]) -> dict[str, ScoreResult]:
    """Each scorer's per-share results joined in the plan's (prompt-major) image order."""
    order = np.argsort(np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]), kind="stable")
    out = {}
    for name in per_share[0]:
        joined = ScoreResult.concat([part[name] for part in per_share])
        out[name] = ScoreResult(joined.reward[order], {d: v[order] for d, v in joined.diagnostics.items()})
    return out


# ----------------------------------------------------------------------------- one evaluation


@dataclass
class Evaluation:
    summary: dict  # what <name>.json holds
    kept: dict[int, np.ndarray]  # plan image index -> uint8 [H, W, 3]: every image in process, `PICTURED` through actors
    plan: EvalPlan
    rows: list[dict]  # what <name>_images.jsonl holds
    name: str = "eval"

    @property
    def is_video(self) -> bool:
        """Whether the images are videos ([F, H, W, 3] each): the pictures then also move (GIFs, TensorBoard)."""
        first = next(iter(self.kept.values()), None)
        return first is not None and first.ndim == 4

    def take(self, index: Sequence[int]) -> np.ndarray:
        """uint8 [len(index), H, W, 3]: the images of these plan indices."""
        missing = [i for i in index if i not in self.kept]
        if missing:
            raise KeyError(f"evaluation images {missing[:5]} are not at hand: an evaluation through actors brings "
                           f"back only the pictures' images (cluster.evaluation.PICTURED)")
        return np.stack([self.kept[i] for i in index])

    def headline(self) -> str:
        """`eval_base: accuracy 0.412 [0.385, 0.440]`, or the first scorer's mean reward without verdicts."""
        if "overall" in self.summary:
            lo, hi = self.summary["ci"]["overall"]
            return f"{self.name}: accuracy {self.summary['overall']:.3f} [{lo:.3f}, {hi:.3f}]"
        scorer, reward = next(iter(self.summary["rewards"].items()))
        return f"{self.name}: mean {scorer} reward {reward['mean']:.3f}"

    def captions(self, index: Sequence[int]) -> list[Caption]:
        """Each image's prompt, tag, GenEval verdict and first scorer's reward, for the pictures."""
        key, scorer = accuracy_key(self.rows), next(iter(self.summary["rewards"]), None)
        return [Caption(r["prompt"], r["tag"], None if key is None or r.get(key) is None else bool(r[key]),
                        r.get(scorer)) for r in (self.rows[i] for i in index)]

    def _title(self, index: Sequence[int], kind: str) -> str:
        legend = "frame: GenEval verdict (green correct, red wrong)" if "overall" in self.summary else "under each: its reward"
        return f"{self.headline()} -- {self.plan.split} prompts, {len(index)} of {self.plan.num_images} {kind}; {legend}"

    def picture(self, index: Sequence[int], columns: int) -> np.ndarray:
        """uint8 [H, W, 3]: these images captioned, one prompt a row (<name>_grid.png, the probe's grid)."""
        title = self._title(index, "images")
        images = self.take(index)
        if images.ndim == 5:  # videos: a strip of evenly spaced frames each (the GIFs of `animations` move)
            title += f"; each video as {min(4, images.shape[1])} of its {images.shape[1]} frames"
        return captioned_grid(stills(images), self.captions(index), columns, title)

    def animation(self, index: Sequence[int], columns: int) -> list[np.ndarray]:
        """Videos only: `picture` that moves, one uint8 [H, W, 3] grid per video frame (the probe's TensorBoard video)."""
        return animated_grid(self.take(index), self.captions(index), columns, self._title(index, "videos"))

    def animations(self, index: Sequence[int], columns: int, out_dir: str | Path) -> list[Path]:
        """Videos only: one animated captioned grid per prompt of `index`, `<name>_videos/<name>_<k>.gif`
        (cluster.plots.animated_grids; PIL, no video codec needed)."""
        return animated_grids(self.take(index), self.captions(index), columns, f"{self.headline()} -- {self.plan.split}",
                              Path(out_dir) / f"{self.name}_videos", self.name)


def per_image_rows(plan: EvalPlan, scores: dict[str, ScoreResult]) -> list[dict]:
    rows = []
    k = 0
    for i, (record, seeds) in enumerate(zip(plan.records, plan.seeds, strict=True)):
        for j, seed in enumerate(seeds):
            row = {"prompt_index": i, "image_index": j, "tag": str(record.get("tag", "all")),
                   "prompt": record["prompt"], "seed": seed}
            for name, result in scores.items():
                row[name] = _json_float(result.reward[k])
                row.update({f"{name}/{d}": _json_float(v[k]) for d, v in result.diagnostics.items()})
            rows.append(row)
            k += 1
    return rows


def _json_float(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def accuracy_key(rows: Sequence[dict]) -> str | None:
    """The per-image verdict column GenEval's accuracy is read from (the first scorer reporting one)."""
    return next((k for k in rows[0] if k.endswith("/" + ACCURACY_DIAGNOSTIC)), None) if rows else None


def _column(rows: Sequence[dict], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else r[key] for r in rows], dtype=np.float64)


def summarize(plan: EvalPlan, rows: list[dict], scorer_names: Sequence[str]) -> dict:
    """<name>.json: accuracy per tag and overall with intervals (when a scorer gives GenEval verdicts),
    and each scorer's mean reward with its interval."""
    prompt_index = [r["prompt_index"] for r in rows]
    tags = [r["tag"] for r in rows]
    out: dict = {"split": plan.split, "num_prompts": len(plan.records), "num_images": plan.num_images,
                 "images_per_tag": plan.images_per_tag(), "fingerprint": plan.fingerprint(), "rewards": {}}
    key = accuracy_key(rows)
    if key is not None:
        # An image the scorer could not judge (rewards/unscored.py) is left out, not counted wrong: a failed
        # scorer would otherwise read as a worse policy. How many were left out is in the summary.
        verdicts = _column(rows, key)
        ok = np.isfinite(verdicts)
        out["accuracy_unscored"] = int((~ok).sum())
        kept_prompts, kept_tags = [i for i, k in zip(prompt_index, ok, strict=True) if k], [t for t, k in zip(tags, ok, strict=True) if k]
        est = bootstrap(verdicts[ok], kept_prompts, kept_tags)
        out.update({k: e.value for k, e in est.items()})
        out["ci"] = {k: e.as_list() for k, e in est.items()}
        wide = bootstrap(verdicts[ok], kept_prompts, kept_tags, resample_prompts=True)
        out["ci_prompts"] = {k: e.as_list() for k, e in wide.items()}
    for name in scorer_names:
        values = _column(rows, name)
        ok = np.isfinite(values)
        entry: dict = {"mean": float(values[ok].mean()) if ok.any() else float("nan"), "masked": int((~ok).sum())}
        if ok.any():
            est = bootstrap(values[ok], np.asarray(prompt_index)[ok], ["all"] * int(ok.sum()))["overall"]
            entry["ci"] = est.as_list()
        diag = [k for k in rows[0] if k.startswith(name + "/")]
        entry.update({k.split("/", 1)[1]: float(np.nanmean(_column(rows, k))) for k in diag})
        out["rewards"][name] = entry
    return out


# Images/s of this process's last evaluation of each split: the next one's ETA while its images are on the workers
_PACE: dict[str, float] = {}


def eval_progress(name: str, plan: EvalPlan) -> Progress:
    return Progress(f"eval {name!r}", plan.num_images, rate=_PACE.get(plan.split))


def evaluate(plan: EvalPlan, sample: SampleFn, score: ScoreFn, *, output_dir: str | Path,
             name: str = "eval", grid: bool = True, progress: Progress | None = None) -> Evaluation:
    """Sample and score the plan; write <name>_images.jsonl, <name>.json and <name>_grid.png. `progress`: the
    one the sampler counts images into (in process); else a new one, that learns the count at the end."""
    progress = progress or eval_progress(name, plan)
    prompts = [r["prompt"] for r in plan.records]
    with progress.heartbeat():
        sampled = sample(prompts, [list(s) for s in plan.seeds], plan.image_index(**PICTURED))
        if sampled.num_images != plan.num_images:
            raise ValueError(f"evaluate: sampler returned {sampled.num_images} images, expected {plan.num_images}")
        progress.update(plan.num_images)
        rep_prompts = [r["prompt"] for r, s in zip(plan.records, plan.seeds, strict=True) for _ in s]
        rep_meta = [dict(r) for r, s in zip(plan.records, plan.seeds, strict=True) for _ in s]
        parts = [(share.images, [rep_prompts[i] for i in index], [rep_meta[i] for i in index])
                 for share, index in zip(sampled.shares, sampled.rows, strict=True)]
        scores = in_plan_order(score(parts), sampled.rows)
    _PACE[plan.split] = progress.finish()
    rows = per_image_rows(plan, scores)
    summary = summarize(plan, rows, list(scores))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (out / f"{name}_images.jsonl").write_text(text)
    summary["images_file"] = f"{name}_images.jsonl"
    summary["images_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    (out / f"{name}.json").write_text(json.dumps(summary, indent=2))
    evaluation = Evaluation(summary, sampled.kept(), plan, rows, name)
    if grid:
        pictured = plan.image_index(**PICTURED)
        write_png(evaluation.picture(pictured, columns=PICTURED["per_prompt"]), out / f"{name}_grid.png")
        if evaluation.is_video:
            evaluation.animations(pictured, PICTURED["per_prompt"], out)
    return evaluation


def before_after_picture(base: Evaluation, final: Evaluation, out_png: str | Path) -> Path:
    """before_after.png: per prompt (PICTURED's per tag), its first (<= 4) images by the base and the trained policy."""
    per_prompt = min(4, *(len(seeds) for seeds in base.plan.seeds))
    pick = base.plan.image_index(per_prompt=per_prompt, prompts_per_tag=PICTURED["prompts_per_tag"])
    return before_after_grid(stills(base.take(pick)), stills(final.take(pick)), out_png, per_prompt=per_prompt,
                             before_captions=base.captions(pick), after_captions=final.captions(pick),
                             title=f"before -- {base.headline()}  |  after -- {final.headline()}")


# ----------------------------------------------------------------------------- reading and comparing


def load_evaluation(path: str | Path, name: str = "eval") -> tuple[dict, list[dict]]:
    """(summary, per-image rows) of an evaluation: `path` is its folder (holding <name>.json) or the
    json itself. Raises EvaluationFileError naming the file when it is missing, truncated or does not
    belong to the summary."""
    path = Path(path)
    summary_file = path if path.suffix == ".json" else path / f"{name}.json"
    if not summary_file.is_file():
        raise EvaluationFileError(f"{summary_file}: no evaluation summary there (run `launch.py eval` first)")
    summary = json.loads(summary_file.read_text())
    if "images_file" not in summary:
        raise EvaluationFileError(f"{summary_file}: written by an older flowray without per-image results; re-evaluate")
    images_file = summary_file.parent / summary["images_file"]
    if not images_file.is_file():
        raise EvaluationFileError(f"{images_file}: missing (named by {summary_file})")
    text = images_file.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != summary["num_images"]:
        raise EvaluationFileError(f"{images_file}: {len(lines)} rows, but {summary_file} counts "
                                  f"{summary['num_images']} images (truncated?)")
    if hashlib.sha256(text.encode()).hexdigest() != summary["images_sha256"]:
        raise EvaluationFileError(f"{images_file}: its content does not match {summary_file} "
                                  "(from another run, or edited)")
    rows = []
    for n, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise EvaluationFileError(f"{images_file}:{n}: not JSON ({err.msg})") from None
    return summary, rows


def compare_evaluations(before: str | Path, after: str | Path, name: str = "eval",
                        name_after: str | None = None) -> dict:
    """after - before, image by image, per tag and overall, with paired bootstrap 95% intervals (fixed
    prompts: `ci`; prompts then images: `ci_prompts`). Refuses evaluations of different prompts, seeds
    or image counts (their fingerprints differ)."""
    (sa, ra), (sb, rb) = load_evaluation(before, name), load_evaluation(after, name_after or name)
    if sa["fingerprint"] != sb["fingerprint"]:
        diff = next((f"row {n}: ({x['prompt']!r}, seed {x['seed']}) vs ({y['prompt']!r}, seed {y['seed']})"
                     for n, (x, y) in enumerate(zip(ra, rb, strict=False), 1)
                     if (x["prompt"], x["seed"]) != (y["prompt"], y["seed"])),
                    f"{len(ra)} vs {len(rb)} images")
        raise EvaluationFileError(
            f"{before} and {after} evaluated different prompts, seeds or image counts (split "
            f"{sa['split']!r} vs {sb['split']!r}; first difference: {diff}): a paired comparison needs "
            "the same data.test_prompts, data.eval_seed and image counts"
        )
    prompt_index = [r["prompt_index"] for r in ra]
    out: dict = {"before": str(before), "after": str(after), "split": sa["split"], "num_images": len(ra),
                 "fingerprint": sa["fingerprint"], "differences": {}, "verdicts": []}
    key = accuracy_key(ra)
    if key is not None:  # per tag and overall, as GenEval reports accuracy, over the images judged in both
        diff, tags = _column(rb, key) - _column(ra, key), [r["tag"] for r in ra]
        ok = np.isfinite(diff)
        out["accuracy_unscored"] = int((~ok).sum())
        kept_prompts, tags = [i for i, k in zip(prompt_index, ok, strict=True) if k], [t for t, k in zip(tags, ok, strict=True) if k]
        diff = diff[ok]
        est = bootstrap(diff, kept_prompts, tags)
        wide = bootstrap(diff, kept_prompts, tags, resample_prompts=True)
        out["differences"]["accuracy"] = {k: {**_difference(sa[k], sb[k], e), "ci_prompts": wide[k].as_list()}
                                          for k, e in est.items()}
        out["verdicts"] += [verdict(f"accuracy {k}", e) for k, e in est.items()]
    for n in (n for n in sa["rewards"] if n in sb["rewards"]):  # each reward model's mean, images scored by both
        a, b = _column(ra, n), _column(rb, n)
        ok = np.isfinite(a) & np.isfinite(b)
        if not ok.any():
            continue
        est = bootstrap((b - a)[ok], np.asarray(prompt_index)[ok], ["all"] * int(ok.sum()))["overall"]
        out["differences"][f"reward/{n}"] = {"overall": _difference(float(a[ok].mean()), float(b[ok].mean()), est)}
        out["verdicts"].append(verdict(f"reward/{n}", est))
    return out


def _difference(before: float, after: float, est: Estimate) -> dict:
    return {"before": before, "after": after, "difference": est.value, "ci": est.as_list()}


def comparison_table(comparison: dict) -> str:
    """Markdown: one row per tag (and overall) and per reward, before / after / paired difference."""
    lines = ["| | before | after | after - before (paired 95% CI) | |", "|---|---|---|---|---|"]
    for label, per_key in comparison["differences"].items():
        for key, d in per_key.items():
            est = Estimate(d["difference"], *d["ci"])
            sign = "up" if est.low > 0 else "down" if est.high < 0 else "no clear change"
            name = key if label == "accuracy" else label
            bold = "**" if key == "overall" and label == "accuracy" else ""
            lines.append(f"| {bold}{name}{bold} | {d['before']:.3f} | {d['after']:.3f} | "
                         f"{est.value:+.3f} [{est.low:+.3f}, {est.high:+.3f}] | {sign} |")
    return "\n".join(lines)
