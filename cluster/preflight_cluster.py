"""The preflight's checks of what a run asks of the cluster: the CPUs and GPUs its actors reserve against
what there is, whether the weight-sync group can land two members on one GPU, and, on a connected Ray
cluster, the model and scorer weights looked for on every node that hosts actors (a task pinned to each).

Apart from the config checks (cluster/preflight_checks.py) because these read the cluster, not files, and
run at start-up as well as in a dry run: cluster/ray_init.py `require_fit` checks the resources, and the
trainer checks the nodes once its placement group is placed (cluster/trainer.py).
"""

from __future__ import annotations

import math
import os

from cluster.config import ExperimentConfig
from cluster.preflight_checks import check_model, check_weights, scorer_weight_options, weight_key
from cluster.preflight_report import Check, PreflightReport

# ----------------------------------------------------------------------------- resources


def resource_demand(cfg: ExperimentConfig) -> dict[str, dict[str, float]]:
    """CPUs and GPUs each part of the run reserves: {'rollout'|'learner'|'rewards[i]': {'CPU', 'GPU'}}.

    Colocated rollout actors share the learner ranks' bundles (cluster/placement.py): each learner
    bundle then also holds ceil(actors / ranks) rollout actors' resources.
    """
    c = cfg.cluster
    rollout_copies = c.num_learner_ranks * math.ceil(c.num_rollout_actors / c.num_learner_ranks) if c.colocate \
        else c.rollout_processes
    demand = {
        "rollout": {"CPU": rollout_copies * c.rollout_num_cpus, "GPU": rollout_copies * c.rollout_num_gpus},
        "learner": {"CPU": c.num_learner_ranks * c.learner_num_cpus, "GPU": c.num_learner_ranks * c.learner_num_gpus},
    }
    for i, s in enumerate(cfg.rewards.scorers):
        demand[f"rewards.scorers[{i}]"] = {"CPU": s.actors * s.num_cpus_per_actor, "GPU": s.actors * s.num_gpus_per_actor}
    return demand


def _terms(cfg: ExperimentConfig, resource: str) -> list[str]:
    """The config keys behind the demand for one resource, as 'count x per-actor' terms."""
    c, per = cfg.cluster, {"CPU": "cpus", "GPU": "gpus"}[resource]
    terms = []
    if getattr(c, f"rollout_num_{per}"):
        terms.append(f"cluster.num_rollout_actors ({c.num_rollout_actors}) x cluster.rollout_num_{per} "
                     f"({getattr(c, f'rollout_num_{per}'):g})")
    if getattr(c, f"learner_num_{per}"):
        terms.append(f"cluster.num_learner_ranks ({c.num_learner_ranks}) x cluster.learner_num_{per} "
                     f"({getattr(c, f'learner_num_{per}'):g})")
    for i, s in enumerate(cfg.rewards.scorers):
        if getattr(s, f"num_{per}_per_actor"):
            terms.append(f"rewards.scorers[{i}].actors ({s.actors}) x rewards.scorers[{i}].num_{per}_per_actor "
                         f"({getattr(s, f'num_{per}_per_actor'):g}) [{s.name}]")
    return terms


def local_resources() -> dict[str, float]:
    """This machine: logical CPUs and visible CUDA GPUs."""
    try:
        import torch

        gpus = torch.cuda.device_count()
    except ImportError:
        gpus = 0
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(gpus)}


def detect_resources() -> tuple[dict[str, float], str]:
    """(resources, where they come from): the connected Ray cluster, else this machine."""
    try:
        import ray

        if ray.is_initialized():
            return dict(ray.cluster_resources()), "the connected Ray cluster"
    except ImportError:
        pass
    return local_resources(), "this machine"


def check_resources(cfg: ExperimentConfig, report: PreflightReport, resources: dict, local: bool) -> None:
    """Add a cluster.cpus and a cluster.gpus check: the run's demand against `resources` (a local Ray
    short of CPUs is only a warning: cluster/ray_init.py sizes it to fit), and the sync group's GPU
    sharing (`check_sync_gpus`). The trainer calls this at start-up (cluster/ray_init.py `require_fit`)."""
    check_sync_gpus(cfg, report)
    demand = resource_demand(cfg)
    for resource in ("CPU", "GPU"):
        need = sum(part[resource] for part in demand.values())
        have = float(resources.get(resource, 0.0))
        key = f"cluster.{resource.lower()}s"
        detail = " + ".join(_terms(cfg, resource)) or "nothing"
        if need <= have + 1e-9:
            report.add(key, "ok", f"needs {need:g} {resource}(s) of {have:g} on {report.resources_source}")
        elif resource == "CPU" and local:
            # cluster/ray_init.py sizes a local Ray to the demand, so actors share the cores (slower, still correct).
            report.add(key, "warn", f"needs {need:g} CPUs ({detail}) but {report.resources_source} has {have:g}: "
                       "a local Ray is sized to fit, so the actors share the cores")
        else:
            report.add(key, "error", f"needs {need:g} {resource}(s) ({detail}) but {report.resources_source} has "
                       f"{have:g}: lower these counts or per-actor {resource}s, or add {resource}s")


def check_sync_gpus(cfg: ExperimentConfig, report: PreflightReport) -> None:
    """An error when cluster.sync_backend=collective can put two members of the weight-sync group on one
    GPU. On CUDA the group is a ProcessGroupNCCL (common/collective.py), and NCCL refuses two ranks on one
    device ("Duplicate GPU detected"). Ray packs fractional GPU shares onto one GPU, and cluster.colocate
    puts rollout actors in the learner ranks' bundles to share theirs. cluster.layout=hybrid has no sync
    group."""
    c = cfg.cluster
    if c.layout != "split" or c.sync_backend != "collective" or not (c.rollout_num_gpus > 0 and c.learner_num_gpus > 0):
        return
    reasons = [f"cluster.{key}={getattr(c, key):g} is a fraction of a GPU, which Ray may pack with other shares "
               "onto one GPU" for key in ("rollout_num_gpus", "learner_num_gpus") if getattr(c, key) < 1]
    if c.colocate:
        reasons.append("cluster.colocate=true puts rollout actors in the learner ranks' bundles to share their GPUs")
    if not reasons:
        report.add("cluster.sync_backend", "ok", "collective weight sync: every member of the group has its own GPU")
        return
    report.add("cluster.sync_backend", "error", "cluster.sync_backend=collective broadcasts weights over NCCL, which "
               "refuses two ranks on one GPU ('Duplicate GPU detected'), and a learner rank and a rollout actor can "
               f"land on one GPU here: {'; '.join(reasons)}. Set cluster.sync_backend=object_store, or give "
               "cluster.rollout_num_gpus and cluster.learner_num_gpus whole GPUs with cluster.colocate=false")


# ----------------------------------------------------------------------------- the nodes that load weights


def _node_checks(cfg: ExperimentConfig, scorers: list[int], model: bool) -> list[Check]:
    """On one node, in the actors' environment: whether model.path (model=True) and the weights of the
    scorers with these indices are where their actors will look for them."""
    report = PreflightReport()
    if model:
        check_model(cfg, report, node=True)
    for i in scorers:
        scorer, key = cfg.rewards.scorers[i], f"rewards.scorers[{i}]"
        try:
            weights = scorer_weight_options(scorer, scorer.scorer_options())
        except (TypeError, KeyError, ImportError):
            continue  # the driver's own check names the error
        for option, value in weights:
            check_weights(report, weight_key(key, scorer, option), scorer.name, option, value, node=True)
    return report.checks


def _fits(node: dict, cpus: float, gpus: float) -> bool:
    have = node["Resources"]
    return have.get("CPU", 0.0) >= cpus - 1e-9 and have.get("GPU", 0.0) >= gpus - 1e-9


def hosting_nodes(cfg: ExperimentConfig, placement=None) -> dict[str, dict]:
    """Node id -> {'address', 'model' (True: a learner rank or rollout actor there loads model.path),
    'scorers' (indices of the scorers whose reward actors can run there)} for every live node that will or
    can host an actor of the run. With `placement` (cluster/placement.py), the policy's nodes are those of
    its bundles; else every node with the resources of one learner rank or rollout actor. Reward actors are
    placed by their pools, outside the group: every node with one actor's resources can host one."""
    import ray

    c = cfg.cluster
    alive = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
    if placement is not None:
        from ray.util import placement_group_table

        policy = set(placement_group_table(placement.group)["bundles_to_node_id"].values())
    else:
        kinds = [(c.learner_num_cpus, c.learner_num_gpus)]
        if c.rollout_processes:
            kinds.append((c.rollout_num_cpus, c.rollout_num_gpus))
        policy = {i for i, n in alive.items() if any(_fits(n, *kind) for kind in kinds)}
    hosts = {}
    for node_id, node in alive.items():
        scorers = [i for i, s in enumerate(cfg.rewards.scorers) if _fits(node, s.num_cpus_per_actor, s.num_gpus_per_actor)]
        if node_id in policy or scorers:
            hosts[node_id] = {"address": node["NodeManagerAddress"], "model": node_id in policy, "scorers": scorers}
    return hosts


def check_nodes(cfg: ExperimentConfig, placement=None, *, skip_driver_node: bool = False,
                timeout_s: float = 120.0) -> PreflightReport:
    """Check, on every node that will load weights (`hosting_nodes`), what `check_model` and the scorers'
    weight checks check on the driver: a Ray task pinned to each node (NodeAffinitySchedulingStrategy), with
    the environment the actors get (common/runtime_env.py), so a cache folder or local model folder missing
    on one node is an error naming the node and the path, before any actor loads. The driver's own node is
    checked in this process (its actors get the driver's hub settings), or skipped (`skip_driver_node`,
    when the caller has checked it already): a single-node cluster starts no task."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from common.runtime_env import actor_env

    report = PreflightReport(resources_source="the connected Ray cluster")
    hosts = hosting_nodes(cfg, placement)
    driver = ray.get_runtime_context().get_node_id()
    findings: dict[str, list[Check]] = {}
    pending = {}
    task = ray.remote(num_cpus=0, max_retries=0)(_node_checks)
    for node_id, host in hosts.items():
        if node_id == driver:
            if not skip_driver_node:
                findings[node_id] = _node_checks(cfg, host["scorers"], host["model"])
            continue
        ref = task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                           runtime_env=actor_env(1)).remote(cfg, host["scorers"], host["model"])
        pending[ref] = node_id
    ready, late = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s) if pending else ([], [])
    for ref in ready:
        try:
            findings[pending[ref]] = ray.get(ref)
        except Exception as err:  # noqa: BLE001 - a node that cannot run the check is reported, not fatal
            report.add("cluster.nodes", "warn", f"{_node_name(hosts, pending[ref])}: the weights check failed "
                       f"({type(err).__name__}: {err})")
    for ref in late:
        ray.cancel(ref, force=True)
        report.add("cluster.nodes", "warn", f"{_node_name(hosts, pending[ref])}: the weights check did not "
                   f"answer within {timeout_s:g} s")
    for node_id, checks in findings.items():
        for check in checks:
            if check.status != "ok":
                report.add(check.key, check.status, f"on {_node_name(hosts, node_id)}: {check.message}")
    if findings and not report.checks:
        report.add("cluster.nodes", "ok", f"the weights were found on every node that loads them ({len(findings)} "
                   f"checked: {', '.join(_node_name(hosts, n) for n in findings)})")
    return report


def _node_name(hosts: dict[str, dict], node_id: str) -> str:
    host = hosts[node_id]
    roles = (["learner ranks and rollout actors"] if host["model"] else []) + \
        [f"reward actors of rewards.scorers[{i}]" for i in host["scorers"]]
    return f"node {host['address']} ({node_id[:8]}, can host {', '.join(roles)})"
