"""Side-by-side comparison of the algorithms on the shapes world (the five of the GRPO family and the
forward-process DiffusionNFT and AWM), at equal wall-clock time and at equal rollout NFE, over several seeds.

    python benchmarks/compare.py [--minutes 10] [--nfe 200000] [--seeds 0 1 2] [--eval-every 5]
                                 [--presets shapes_flowgrpo ...] [--output outputs/compare] [--write-docs]
                                 [key=value ...]

Every run trains one preset from the same base model on local Ray until both budgets are spent
(training wall time, evaluations excluded; and cumulative rollout NFE: G2RPO spends ~7x Flow-GRPO's
per prompt). It evaluates at the iteration where each budget is first crossed (that is the preset's
result at that budget), every `--eval-every` iterations, and at the end. The base model is evaluated
once and shared (fixed eval seeds: it does not depend on the preset or the seed).

Every evaluation is the preset's powered evaluation (the same images, seed by seed), so each result
is a paired change over the base model with its 95% interval, and presets are ranked per budget with
each one's paired difference from the best (same images). With several seeds the per-image verdicts
are averaged over seeds first: the interval covers the evaluation's noise, and the table shows the
spread between seeds beside it. Writes results.json (runs and rankings), a figure with accuracy
against wall time and against NFE, and a Markdown table; `--write-docs` (old name `--write-readme`) puts
the table, the command and the figure into docs/results.md (between its markers, the figure beside it in
docs/), so the published numbers are never typed by hand.

Each finished run keeps its result in its folder (compare_run.json): run the same command again after an
interruption and it reuses the finished runs, redoing only the one that was cut off.

A run whose learner stops for non-finite gradients (learner.max_consecutive_skips) is a result, not a
crash: the policy it reached is evaluated, and the table marks it "(diverged)". A preset's decaying
learning rate keeps its own horizon (learner.lr_schedule_iterations), since `iterations` is the cap here.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Ray starts its workers at nice 15 (RAY_worker_niceness), so any ordinary process beside a comparison (an editor's
# linter, a test run, even a nice-19 job: weight 15 against 36) takes the CPU its actors' wall-clock budget counts.
# At 0 they hold their share; a neighbour at nice 19 then gets ~1.5% of a contested core.
os.environ.setdefault("RAY_worker_niceness", "0")

import numpy as np  # noqa: E402

from cluster.config import REPO_ROOT, load_config  # noqa: E402

PRESETS = ["shapes_flowgrpo", "shapes_flowgrpo_fast", "shapes_dancegrpo", "shapes_mixgrpo", "shapes_g2rpo",
           "shapes_grpo_guard", "shapes_flow_dppo", "shapes_nft", "shapes_awm", "shapes_elbo", "shapes_dgpo"]
BEGIN, END = "<!-- BEGIN COMPARE RESULTS -->", "<!-- END COMPARE RESULTS -->"
BUDGET_KEYS = {"wall": "charts/wall_seconds", "nfe": "charts/nfe_total"}
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def crossing(rows: list[dict], key: str, limit: float) -> int | None:
    """Index of the first iteration whose cumulative `key` reached `limit` (None: never)."""
    return next((i for i, r in enumerate(rows) if r[key] >= limit), None)


def applicable(overrides: list[str], algorithm) -> list[str]:
    """The shared `key=value` overrides that mean something for a preset whose unit is `algorithm`: an
    `algorithm.<key>` its unit has no field for (another algorithm's setting) is left out, not an error."""
    fields = type(algorithm).model_fields
    return [o for o in overrides
            if not (o.startswith("algorithm.") and o.split("=", 1)[0].split(".")[1] not in fields)]


def run_one(preset: str, seed: int, limits: dict[str, float], args, run_dir: Path, base_file: Path | None,
            horizon: int | None) -> dict:
    """Train `preset` until both budgets are spent (training wall seconds and rollout NFE), evaluating
    at the iteration each budget is first crossed; the accuracy there is the preset's result at that
    budget. One run serves both budgets: a budget is crossed within one iteration of its limit.
    `base_file`: the base model's eval_base.json when an earlier run already made it (it does not
    depend on the preset's RL settings or seed: fixed eval seeds, same model). Each budget's entry
    names the evaluation file it was read from (`eval_file`), for the paired comparisons. `horizon`: the
    preset's decaying-rate horizon (`schedule_horizon`, None for a constant rate), kept over the cap."""
    from cluster.plots import eval_points, read_metrics
    from cluster.trainer import Trainer
    from learner.worker import PolicyDiverged

    path = REPO_ROOT / "configs" / f"{preset}.yaml"
    overrides = applicable(args.overrides, load_config(path).algorithm)
    cfg = load_config(path, [
        f"seed={seed}", f"logging.output_dir={run_dir}", f"logging.eval_every={args.eval_every}",
        f"logging.eval_base={str(base_file is None).lower()}", "logging.tensorboard=false",
        "logging.checkpoint_every=0", f"iterations={args.max_iterations}", *overrides,
        *([f"learner.lr_schedule_iterations={horizon}"] if horizon else []),
    ])  # fmt: skip
    crossed: set[str] = set()

    def budget_crossed(m: dict) -> bool:
        new = {b for b, limit in limits.items() if b not in crossed and m[BUDGET_KEYS[b]] >= limit}
        crossed.update(new)
        return bool(new)

    diverged = None
    with Trainer(cfg) as trainer:
        try:
            final = trainer.run(stop=lambda m: all(m[BUDGET_KEYS[b]] >= lim for b, lim in limits.items()),
                                evaluate_when=budget_crossed)
        except PolicyDiverged as err:
            # A result, not a crash: the comparison goes on, and the policy the run reached is evaluated
            # like any other (its unreached budgets read that evaluation, marked in the table).
            diverged = str(err).splitlines()[0]
            print(f"[compare] {preset} seed {seed} diverged: {diverged}", flush=True)
            final = trainer.evaluate()
    rows = read_metrics(run_dir / "metrics.jsonl")
    base_file = base_file or run_dir / "eval_base.json"
    base = json.loads(base_file.read_text())
    points = eval_points(rows, base.get("overall", float("nan")), final.summary.get("overall", float("nan")),
                         x_keys=("charts/wall_seconds", "charts/nfe_total"))
    at = {}
    for budget, limit in limits.items():
        i = crossing(rows, BUDGET_KEYS[budget], limit)
        capped = i is None or i == len(rows) - 1
        summary = final.summary if capped else {k[5:]: v for k, v in rows[i].items() if k.startswith("eval/")}
        row = rows[-1] if i is None else rows[i]
        name = "eval" if capped else f"eval_iter{i + 1:06d}"
        at[budget] = {"iterations": len(rows) if i is None else i + 1, "summary": summary, "reached": i is not None,
                      "wall_s": row["charts/wall_seconds"], "nfe": row["charts/nfe_total"],
                      "eval_file": str(run_dir / f"{name}.json")}
    return {"preset": preset, "seed": seed, "iterations": len(rows), "final": final.summary, "base": base,
            "base_file": str(base_file), "curve": points, "at": at, "diverged": diverged}


def schedule_horizon(cfg) -> int | None:
    """The horizon of a preset's decaying learning rate (None for a constant rate). A run's `iterations`
    becomes compare's cap, but it is also that horizon: stretched over the cap, a cosine would stay near
    its peak for the whole budget, which is not the preset the main job runs."""
    if cfg.learner.lr_schedule == "constant":
        return None
    return cfg.learner.lr_schedule_iterations or cfg.iterations


RUN_RESULT = "compare_run.json"  # a finished run's result, in its run directory (what a rerun reuses)


def run_settings(limits: dict[str, float], args) -> dict:
    """What a run's result depends on besides its preset and seed: a finished run is reused only when these
    are the same (a changed budget or override runs it again)."""
    return {"limits": limits, "max_iterations": args.max_iterations, "eval_every": args.eval_every,
            "overrides": list(args.overrides)}


def preset_settings(settings: dict, path: Path, horizon: int | None) -> dict:
    """`settings` plus what one preset's run depends on: its validated config (a preset whose settings
    changed runs again; one only reformatted or commented does not) and its decaying rate's horizon
    (`schedule_horizon`; constant rates have none)."""
    canonical = json.dumps(load_config(path).model_dump(mode="json"), sort_keys=True)
    own = {**settings, "preset_config_sha256": hashlib.sha256(canonical.encode()).hexdigest()}
    return own if horizon is None else {**own, "lr_schedule_iterations": horizon}


def _evaluation_files(summary: Path) -> list[Path]:
    """An evaluation's summary and the per-image file it names (what `paired_change` reads)."""
    return [summary, summary.parent / json.loads(summary.read_text())["images_file"]]


def _run_files(run_dir: Path, result: dict) -> list[Path]:
    evaluations = [Path(result["base_file"]), *(Path(a["eval_file"]) for a in result["at"].values())]
    return [run_dir / RUN_RESULT, *dict.fromkeys(f for e in evaluations for f in _evaluation_files(e))]


def _gz(path: Path) -> Path:
    return path.with_name(path.name + ".gz")


def keep_run(run_dir: Path, out: Path, keep: Path) -> None:
    """Copy a finished run's result and the evaluations it names (summaries and per-image files, gzipped:
    ~70 kB each) to `keep` under the same relative paths: the comparison outlasts a machine whose outputs/
    is wiped, and the repository can carry what it measured."""
    result = json.loads((run_dir / RUN_RESULT).read_text())["result"]
    for f in _run_files(run_dir, result):
        target = _gz(keep / f.relative_to(out))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(gzip.compress(f.read_bytes(), mtime=0))


def restore_run(run_dir: Path, out: Path, keep: Path) -> None:
    """Put a kept run's files back under `out` where they are missing (the inverse of `keep_run`)."""
    kept = _gz(keep / run_dir.relative_to(out) / RUN_RESULT)
    if (run_dir / RUN_RESULT).exists() or not kept.exists():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_RESULT).write_bytes(gzip.decompress(kept.read_bytes()))
    result = json.loads((run_dir / RUN_RESULT).read_text())["result"]
    evaluations = [Path(result["base_file"]), *(Path(a["eval_file"]) for a in result["at"].values())]
    for summary in dict.fromkeys(evaluations):
        for name in (summary, None):
            if name is None:  # the per-image file the (restored) summary names
                name = summary.parent / json.loads(summary.read_text())["images_file"]
            source = _gz(keep / name.relative_to(out))
            if not name.exists() and source.exists():
                name.parent.mkdir(parents=True, exist_ok=True)
                name.write_bytes(gzip.decompress(source.read_bytes()))


def finished_run(run_dir: Path, settings: dict) -> dict | None:
    """The result of a run that completed in `run_dir` with the same `settings`, else None. The comparison
    takes hours on a laptop: a rerun of the same command skips what is done and loses only the run that
    was in progress (the Trainer moves that one's folder to previous_runs/ when it starts again)."""
    path = run_dir / RUN_RESULT
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    if saved.get("settings") != settings:
        print(f"[compare] {run_dir} was run with other settings (budgets, overrides, preset file or rate horizon): running it again", flush=True)
        return None
    return saved["result"]


def paired_change(before: list[str], after: list[str]) -> dict:
    """Accuracy of `after` minus `before`, image by image, per tag and overall, with the paired bootstrap
    95% interval (cluster.eval_stats.bootstrap, the prompt set fixed). Several files on a side (one per
    seed) are averaged image by image first: the interval then covers the evaluation's noise around
    the seeds' mean, not the spread between seeds (the table reports that spread beside it)."""
    from cluster.eval_stats import bootstrap
    from cluster.evaluation import EvaluationFileError, accuracy_key, load_evaluation

    def mean_correct(files: list[str]) -> tuple[np.ndarray, list[dict], str]:
        loaded = [load_evaluation(f) for f in files]
        prints = {summary["fingerprint"] for summary, _ in loaded}
        if len(prints) != 1:
            raise EvaluationFileError(f"{files}: evaluations of different prompts, seeds or counts")
        rows = loaded[0][1]
        key = accuracy_key(rows)
        # an image no seed's scorer could judge stays NaN (left out below), never a 0
        verdicts = np.array([[np.nan if r[key] is None else float(r[key]) for r in rs] for _, rs in loaded])
        judged = np.isfinite(verdicts).sum(axis=0)
        mean = np.where(judged > 0, np.nansum(verdicts, axis=0) / np.maximum(judged, 1), np.nan)
        return mean, rows, prints.pop()

    (a, rows, fa), (b, _, fb) = mean_correct(before), mean_correct(after)
    if fa != fb:
        raise EvaluationFileError(f"{before} vs {after}: evaluations of different prompts, seeds or counts")
    ok = np.isfinite(b - a)
    est = bootstrap((b - a)[ok], [r["prompt_index"] for r, k in zip(rows, ok, strict=True) if k],
                    [r["tag"] for r, k in zip(rows, ok, strict=True) if k])
    return {k: {"difference": e.value, "ci": e.as_list()} for k, e in est.items()}


def rankings(results: list[dict]) -> dict[str, list[dict]]:
    """Per budget, the presets ranked by their paired change over the base model (mean over seeds), each
    with that change and its paired difference from the best preset at the same budget."""
    out = {}
    for budget in ("wall", "nfe"):
        ranked = []
        for preset in dict.fromkeys(r["preset"] for r in results):
            rs = [r for r in results if r["preset"] == preset and budget in r["at"]]
            if not rs:
                continue
            files = [r["at"][budget]["eval_file"] for r in rs]
            overall = [r["at"][budget]["summary"].get("overall", float("nan")) for r in rs]
            ranked.append({
                "preset": preset, "files": files, "seeds": len(rs), "reached": all(r["at"][budget]["reached"] for r in rs),
                "diverged": sum(bool(r.get("diverged")) for r in rs),
                "iterations": float(np.mean([r["at"][budget]["iterations"] for r in rs])),
                "nfe": float(np.mean([r["at"][budget]["nfe"] for r in rs])),
                "wall_s": float(np.mean([r["at"][budget]["wall_s"] for r in rs])),
                "overall": float(np.mean(overall)), "seed_std": float(np.std(overall)),
                "change": paired_change([r["base_file"] for r in rs], files),
            })  # fmt: skip
        ranked.sort(key=lambda x: -x["change"]["overall"]["difference"])
        for x in ranked:
            x["vs_best"] = paired_change(ranked[0]["files"], x["files"])["overall"]
        out[budget] = ranked
    return out


def _ci(d: dict) -> str:
    return f"{d['difference']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"


def table(results: list[dict], ranked: dict[str, list[dict]]) -> str:
    """Per budget, one row per preset, best first: accuracy where the budget was spent, its paired change
    over the base model per tag and overall (95% intervals), and its paired difference from the best."""
    tags = [t for t in TAGS if any(t in r["base"] for r in results)]
    base = np.mean([r["base"].get("overall", np.nan) for r in results])
    blocks = []
    for budget, rows in ranked.items():
        title = "equal wall-clock training time" if budget == "wall" else "equal rollout NFE"
        lines = [f"**{title}** (base overall {base:.3f}; changes are paired over the same evaluation images)", "",
                 "| rank | preset | seeds | iterations | NFE | train s | overall | change [95% CI] | vs best [95% CI] | "
                 + " | ".join(tags) + " |", "|---" * (9 + len(tags)) + "|"]
        for n, x in enumerate(rows, 1):
            spread = f" ± {x['seed_std']:.3f}" if x["seeds"] > 1 else ""
            short = "" if x["reached"] else " (cap hit first)"
            if x.get("diverged"):  # learner.max_consecutive_skips non-finite steps: stopped, evaluated where it was
                seeds = "" if x["seeds"] == 1 else f" in {x['diverged']} of {x['seeds']} seeds"
                short = f" (diverged{seeds})"
            vs_best = "best" if n == 1 else _ci({"difference": x["vs_best"]["difference"], "ci": x["vs_best"]["ci"]})
            lines.append(f"| {n} | {x['preset']}{short} | {x['seeds']} | {x['iterations']:.0f} | {x['nfe']:.0f} | "
                         f"{x['wall_s']:.0f} | {x['overall']:.3f}{spread} | {_ci(x['change']['overall'])} | {vs_best} | "
                         + " | ".join(_ci(x["change"][t]) for t in tags) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def figure(results: list[dict], limits: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    for ax, budget, x, label in ((axes[0], "wall", 0, "training wall time (s)"), (axes[1], "nfe", 1, "rollout NFE")):
        for i, preset in enumerate(dict.fromkeys(r["preset"] for r in results)):
            for j, r in enumerate(r for r in results if r["preset"] == preset):
                pts = np.array(r["curve"])
                # ten colours, then the same colours dashed with squares: eleven presets stay told apart
                ax.plot(pts[:, x], pts[:, 2], "os^"[i // 10 % 3], ls=("-", "--", ":")[i // 10 % 3], color=f"C{i % 10}",
                        alpha=0.8, label=preset if j == 0 else None)
        ax.axvline(limits[budget], color="k", ls="--", lw=0.8)
        ax.set_xlabel(label)
        ax.set_ylabel("shapes-GenEval overall")
        ax.set_title(f"equal {'wall-clock' if budget == 'wall' else 'NFE'} budget (dashed)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --docs-block: which generated block of docs/results.md a comparison fills, and the figure's name beside it
DOCS_BLOCKS = {"main": ("COMPARE RESULTS", "compare.png"), "long": ("COMPARE LONG RESULTS", "compare-long.png")}


def write_docs(markdown: str, command: str, figure: Path, page: Path | None = None, block: str = "main") -> Path:
    """The table and its command into `block`'s compare block (DOCS_BLOCKS) of `page` (default: the block's
    page, docs/results.md), the figure copied beside the page and linked relative to it. Returns the page."""
    from readme_section import markers, page_of, replace_between

    name, figure_name = DOCS_BLOCKS[block]
    begin, end = markers(name)
    page = page_of(begin) if page is None else page
    copy = page.parent / figure_name
    copy.write_bytes(figure.read_bytes())
    rel = os.path.relpath(copy, page.parent)
    body = f"Generated by `{command}`.\n\n{markdown}\n\n![accuracy vs budget]({rel})\n"
    return replace_between(begin, end, body, page)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=PRESETS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget per run")
    p.add_argument("--nfe", type=float, default=200_000, help="rollout NFE budget per run")
    p.add_argument("--max-iterations", type=int, default=1000, help="hard cap per run")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--output", default="outputs/compare")
    p.add_argument("--keep", help="also keep each finished run's result and evaluation files here (gzipped), and "
                   "reuse them from here when --output lacks them (a folder the repository carries)")
    p.add_argument("--write-docs", "--write-readme", dest="write_docs", action="store_true",
                   help="write the table, command and figure into docs/results.md (--write-readme: old name)")
    p.add_argument("--docs-block", choices=sorted(DOCS_BLOCKS), default="main",
                   help="which block --write-docs fills: 'main' (the main job's budget, every preset) or 'long' "
                        "(a longer budget for the best few)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    import ray

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    from cluster.ray_init import cpu_demand, start_local_ray

    paths = [REPO_ROOT / "configs" / f"{p}.yaml" for p in args.presets]
    configs = [load_config(path, applicable(args.overrides, load_config(path).algorithm)) for path in paths]
    start_local_ray(max(map(cpu_demand, configs)), log_to_driver=False)
    results, base_file = [], None
    limits = {"wall": 60 * args.minutes, "nfe": args.nfe}
    settings = run_settings(limits, args)  # the same for every run of this command
    keep = Path(args.keep) if args.keep else None
    try:
        # Seed by seed over the presets: when the comparison is cut off, every preset has as many seeds as
        # any other, give or take one.
        for seed in args.seeds:
            for preset, path, config in zip(args.presets, paths, configs, strict=True):
                run_dir = out / f"{preset}-seed{seed}"
                if keep is not None:
                    restore_run(run_dir, out, keep)
                horizon = schedule_horizon(config)  # the preset's own, with the overrides: the run's and the key's
                own = preset_settings(settings, path, horizon)
                if (done := finished_run(run_dir, own)) is not None:
                    print(f"[compare] {preset} seed {seed}: finished earlier, reusing {run_dir / RUN_RESULT}", flush=True)
                    results.append(done)
                else:
                    print(f"[compare] {preset} seed {seed} until wall {limits['wall']:g} s and NFE {limits['nfe']:g}",
                          flush=True)
                    load = os.getloadavg()[0]
                    results.append(run_one(preset, seed, limits, args, run_dir, base_file, horizon))
                    # the machine's load around the run: a wall-clock budget buys less on a busy machine
                    results[-1]["load_average"] = [load, os.getloadavg()[0]]
                    (run_dir / RUN_RESULT).write_text(json.dumps({"settings": own, "result": results[-1]}))
                    if keep is not None:
                        keep_run(run_dir, out, keep)
                base_file = Path(results[-1]["base_file"])
                print(f"[compare] {preset} seed {seed}: " + ", ".join(
                    f"{b} {a['summary'].get('overall', float('nan')):.3f}" for b, a in results[-1]["at"].items()),
                    flush=True)
    finally:
        ray.shutdown()
    ranked = rankings(results)
    (out / "results.json").write_text(json.dumps({"runs": results, "rankings": ranked}, indent=2))
    markdown = table(results, ranked)
    (out / "results.md").write_text(markdown + "\n")
    figure(results, limits, out / "compare.png")
    print(markdown)
    if args.write_docs:
        command = "python benchmarks/compare.py " + shlex.join(argv if argv is not None else sys.argv[1:])
        write_docs(markdown, command, out / "compare.png", block=args.docs_block)
    return results


if __name__ == "__main__":
    main()
