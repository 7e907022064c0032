"""The chaos benchmark's checks and report (benchmarks/chaos.py runs the faulted run; this reads what it
left): exactly-once training from metrics.jsonl, reward accounting, the work redone from the drivers' logs,
memory per process, the restart counters, and the paired comparison with an undisturbed run.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from pathlib import Path

from cluster.config import load_config
from cluster.evaluation import compare_evaluations
from cluster.plots import read_metrics

PROGRESS = re.compile(r"^\[it (\d+)/(\d+)\]", re.M)
RESAMPLED_MANY = re.compile(r"rollout-\d+ died; waiting for its restart and resampling its (\d+) groups")
RESAMPLED_ONE = re.compile(r"died holding group \d+'s images and latents; resampling it")
EVAL_REDONE = re.compile(r"for its restart and evaluating again")
# Row keys that differ between two runs of one config by design: wall times, rates, this process's counts.
NOT_COMPARED = re.compile(r"^(time|charts)/|/seconds$|^reward/(requests_resubmitted|duplicates_ignored)$|_per_s$")
COMPARED_PREFIXES = ("reward/", "advantage/", "policy/", "learner/", "probe/", "eval/")


def sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def exactly_once(rows: list[dict], cfg) -> dict:
    """Every iteration once, every group index once per iteration, each sampled with the iteration's
    policy version (synchronous: the version after `iteration` updates), and every image of an iteration
    scored once or marked unscored, by every scorer."""
    groups = cfg.prompts_per_iteration
    bad_groups = [r["iteration"] for r in rows if sorted(r.get("groups", [])) != list(range(groups))]
    lag = 1 if cfg.cluster.async_mode else 0
    bad_versions = [r["iteration"] for r in rows
                    if r.get("policy_versions") != [max(0, r["iteration"] - lag)] * groups]
    images = cfg.data.images_per_iteration
    scorers = [s.name for s in cfg.rewards.scorers]
    bad_counts = [r["iteration"] for r in rows for s in scorers
                  if r.get(f"reward/{s}/scored", 0) + r.get(f"reward/{s}/unscored", 0) != images]
    return {
        "iterations_once": [r["iteration"] for r in rows] == list(range(cfg.iterations)),
        "groups_once": not bad_groups, "iterations_with_wrong_groups": bad_groups,
        "versions_ok": not bad_versions, "iterations_with_wrong_versions": bad_versions,
        "images_scored_once": not bad_counts, "iterations_with_wrong_counts": sorted(set(bad_counts)),
    }


def work_done(logs: list[Path], rows: list[dict], groups: int) -> dict:
    """Iterations run by every driver process (their progress lines: redone ones too), and groups sampled,
    trained and resampled."""
    text = [p.read_text(errors="replace") for p in logs]
    run = sum(len(PROGRESS.findall(t)) for t in text)
    resampled = sum(int(n) for t in text for n in RESAMPLED_MANY.findall(t)) + sum(len(RESAMPLED_ONE.findall(t)) for t in text)
    return {"iterations": len(rows), "iterations_run": run, "iterations_redone": run - len(rows),
            "groups_trained": sum(len(r.get("groups", [])) for r in rows),
            "groups_sampled_at_least": run * groups + resampled, "groups_resampled": resampled,
            "groups_resampled_in_kept_rows": sum(len(r.get("groups_resampled", [])) for r in rows),
            "evaluations_redone": sum(len(EVAL_REDONE.findall(t)) for t in text)}


def reward_accounting(rows: list[dict]) -> dict:
    """Unscored images, and the pools' resubmitted requests and ignored duplicate answers, summed over the
    driver processes whose rows were kept (each process counts from 0: a drop marks a new one)."""
    out = {"unscored_images": sum(r.get("reward/unscored_images", 0.0) for r in rows)}
    for key in ("reward/requests_resubmitted", "reward/duplicates_ignored"):
        total, last = 0.0, 0.0
        for r in rows:
            value = r.get(key, 0.0)
            if value < last:  # a new driver process
                total += last
            last = value
        out[key.split("/")[1]] = total + last
    return out


def rss_table(samples: list[dict]) -> list[dict]:
    """Per process name: RSS at its first and last sample, its processes (restarts + 1), and the drift of
    its longest-lived process over its life."""
    by_name: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        by_name[s["process"]].append(s)
    out = []
    for name, rows in sorted(by_name.items()):
        pids: dict[int, list[dict]] = defaultdict(list)
        for s in rows:
            pids[s["pid"]].append(s)
        longest = max(pids.values(), key=lambda r: r[-1]["t"] - r[0]["t"])
        out.append({"process": name, "start_mib": rows[0]["rss_mib"], "end_mib": rows[-1]["rss_mib"],
                    "processes": len(pids), "peak_mib": max(s["rss_mib"] for s in rows),
                    "longest_minutes": round((longest[-1]["t"] - longest[0]["t"]) / 60, 1),
                    "longest_drift_mib": round(longest[-1]["rss_mib"] - longest[0]["rss_mib"], 1)})
    return out


def against_baseline(run_dir: Path, baseline: Path, rows: list[dict], iterations: int) -> dict:
    """The final policy's paired evaluation against the undisturbed run, the final weights' digests, and
    which metrics rows differ (the keys that are deterministic for a config)."""
    comparison = compare_evaluations(baseline, run_dir)
    overall = comparison["differences"].get("accuracy", {}).get("overall")
    base_rows = {r["iteration"]: r for r in read_metrics(baseline / "metrics.jsonl")}
    differing = sorted({r["iteration"] for r in rows for k, v in r.items()
                        if k.startswith(COMPARED_PREFIXES) and not NOT_COMPARED.search(k)
                        and isinstance(v, float) and base_rows.get(r["iteration"], {}).get(k) != v})
    ckpt = f"checkpoints/iter_{iterations:06d}"
    weights = {f: (sha256(run_dir / ckpt / f), sha256(baseline / ckpt / f))
               for f in ("trainable.safetensors", "ema.safetensors", "old_policy.safetensors")}
    weights = {f: pair for f, pair in weights.items() if pair != (None, None)}
    return {
        "overall": overall, "verdicts": comparison["verdicts"],
        "same_within_ci": overall is None or overall["ci"][0] <= 0.0 <= overall["ci"][1],
        "eval_images_identical": comparison["differences"] and all(
            d["difference"] == 0.0 for per in comparison["differences"].values() for d in per.values()),
        "weights_identical": bool(weights) and all(a == b and a is not None for a, b in weights.values()),
        "weights": weights, "iterations_with_different_metrics": differing,
    }


def build_report(*, run_dir: Path, baseline: Path | None, logs: list[Path], kills: list[dict], not_fired: list[dict],
                 exits: list[dict], rss: list[dict], counters: dict, meta: dict) -> dict:
    cfg = load_config(run_dir / "config.yaml")
    rows = read_metrics(run_dir / "metrics.jsonl")
    once = exactly_once(rows, cfg)
    work = work_done(logs, rows, cfg.prompts_per_iteration)
    rewards = reward_accounting(rows)
    resumes = [e for e in exits if e["cause"] != "finished"]
    resume_file = run_dir / "resumes.jsonl"
    recorded = len(resume_file.read_text().splitlines()) if resume_file.is_file() else 0
    report = {
        "meta": meta, "kills": kills, "not_fired": not_fired, "exits": exits, "work": work, "rewards": rewards,
        "exactly_once": once, "rss": rss_table(rss), "restart_counters": counters,
        "resumes": {"performed": len(resumes), "recorded": recorded,
                    "counter": counters.get("flowray_run_resumes", 0.0)},
    }
    # Bit-identical is expected when every fault was redone deterministically (benchmarks/chaos.py docstring).
    expected_identical = not cfg.cluster.async_mode and rewards["unscored_images"] == 0
    checks = {**{k: v for k, v in once.items() if isinstance(v, bool)},
              "no_unplanned_exits": all(e["cause"] in ("driver", "learner", "finished") for e in exits),
              "resumes_recorded": recorded == len(resumes) and report["resumes"]["counter"] == len(resumes),
              "actor_kills_counted": all(k["counted"] != "not shown" for k in kills if k["kind"] in ("rollout", "reward"))}
    if baseline is not None:
        report["baseline"] = against_baseline(run_dir, baseline, rows, cfg.iterations)
        report["baseline"]["expected_identical"] = expected_identical
        checks["same_within_ci"] = report["baseline"]["same_within_ci"]
        if expected_identical:
            checks["bit_identical"] = report["baseline"]["weights_identical"] and not report["baseline"][
                "iterations_with_different_metrics"]
    checks["all_passed"] = all(checks.values())
    report["checks"] = checks
    return report


def _per_kind(kills: list[dict], not_fired: list[dict]) -> str:
    fired = defaultdict(int)
    for k in kills:
        fired[k["kind"]] += 1
    planned = defaultdict(int, fired)
    for k in not_fired:
        planned[k["kind"]] += 1
    return ", ".join(f"{kind} {fired[kind]}/{planned[kind]}" for kind in ("rollout", "reward", "learner", "driver")
                     if planned[kind])


def markdown(report: dict) -> str:
    """The report as the Markdown that docs/benchmarks.md holds."""
    m, w, r, once, checks = report["meta"], report["work"], report["rewards"], report["exactly_once"], report["checks"]
    causes = defaultdict(int)
    for e in report["exits"]:
        causes[e["cause"]] += 1
    unplanned = sum(n for c, n in causes.items() if c not in ("driver", "learner", "finished"))
    actor_kills = [k for k in report["kills"] if k["kind"] in ("rollout", "reward")]
    seen = [k["counted_after"] for k in actor_kills if k["counted"] == "shown"]
    ended = sum(k["counted"] == "driver ended first" for k in actor_kills)
    yes = {True: "yes", False: "**no**"}
    lines = [
        "| | |", "|---|---|",
        f"| run | {m['iterations']} iterations in {m['seconds'] / 60:.1f} min under faults"
        + (f", {m['undisturbed_seconds'] / 60:.1f} min undisturbed" if m.get("undisturbed_seconds") else "")
        + f"; kill schedule seed {m['seed']} over {m['minutes']:g} min; load average {m['load_average'][1]:.1f} |",
        f"| kills fired / planned | {_per_kind(report['kills'], report['not_fired'])} |",
        f"| driver exits | {causes['driver']} killed, {causes['learner']} after a learner rank's death, "
        f"{unplanned} unplanned; {report['resumes']['performed']} resumes |",
        f"| iterations | {w['iterations']} trained, each once: {yes[once['iterations_once']]}; {w['iterations_run']} run "
        f"({w['iterations_redone']} redone after resumes) |",
        f"| groups | {w['groups_trained']} trained, each group index once per iteration: {yes[once['groups_once']]}, "
        f"sampled with the iteration's policy version: {yes[once['versions_ok']]}; {w['groups_sampled_at_least']}+ "
        f"sampled, {w['groups_resampled']} resampled after a rollout actor's death |",
        f"| rewards | every image scored once or unscored: {yes[once['images_scored_once']]}; unscored "
        f"{r['unscored_images']:.0f}, requests resubmitted {r['requests_resubmitted']:.0f}, duplicate answers "
        f"ignored {r['duplicates_ignored']:.0f} |",
        f"| restart counters (Prometheus) | {len(seen)} of {len(actor_kills)} actor kills shown by `flowray_actor_restarts`"
        + (f" (after {min(seen):.0f}-{max(seen):.0f} s)" if seen else "")
        + (f", {ended} not checked (their driver ended first)" if ended else "")
        + f"; `flowray_run_resumes` {report['resumes']['counter']:.0f} |",
    ]
    if (b := report.get("baseline")) is not None:
        o = b["overall"]
        diff = f"overall {o['before']:.3f} -> {o['after']:.3f}, {o['difference']:+.3f} [{o['ci'][0]:+.3f}, {o['ci'][1]:+.3f}]" \
            if o else "no accuracy"
        lines.append(f"| final policy vs undisturbed (paired) | {diff}; within the interval: {yes[b['same_within_ci']]}; "
                     f"weights bit-identical: {yes[b['weights_identical']]} (expected: "
                     f"{'yes' if b['expected_identical'] else 'no'}); metrics rows differing: "
                     f"{len(b['iterations_with_different_metrics'])} |")
    lines.append(f"| checks | {'all passed' if checks['all_passed'] else 'FAILED: ' + ', '.join(k for k, v in checks.items() if not v)} |")
    lines += ["", "| process | RSS MiB at start | at end | peak | processes | longest-lived: drift over its life |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {p['process']} | {p['start_mib']:.0f} | {p['end_mib']:.0f} | {p['peak_mib']:.0f} | {p['processes']} | "
              f"{p['longest_drift_mib']:+.0f} MiB over {p['longest_minutes']:.1f} min |" for p in report["rss"]]
    return "\n".join(lines)


def write_docs(table: str, command: str | None = None) -> Path:
    """The table into docs/benchmarks.md between the CHAOS markers."""
    from readme_section import markers, replace_between

    begin, end = markers("CHAOS")
    body = (f"Generated by `{command}`.\n\n" if command else "") + table
    return replace_between(begin, end, body)
