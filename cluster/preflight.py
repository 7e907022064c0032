"""Preflight: check that a config can run before anything heavy loads (`launch.py --dry-run`).

`preflight(cfg)` reads files and counts resources, nothing more: no weights are loaded, nothing is
downloaded, no actor starts. It checks that
- the prompt files load, fit the reward models (GenEval scorers need GenEval metadata, OCR needs a
  quoted target in every prompt) and hold enough prompts for one iteration;
- `model.path` is a complete local diffusers folder, or a hub id (reported as a download);
- every scorer accepts its options, and its weights are an existing local folder or a hub id;
- the CPUs and GPUs that the rollout actors, learner ranks and reward actors reserve fit the cluster
  (Ray's `cluster_resources()` when connected, else this machine), and no two members of a collective
  weight-sync group can land on one GPU (NCCL refuses them);
- when connected to Ray, that every other node which can host those actors finds the weights they load
  (`check_nodes`: a small task pinned to each node, run with the actors' environment);
- each actor kind's estimated memory (cluster/memory_plan.py, from configs and safetensors headers) fits
  its GPU share of `cluster.gpu_memory_gb`; the breakdown is printed as `memory ...` lines.
Each check is ok, warn or error; `report.ok` is False on any error, and every message names the
config key to change. The summary also lists the sigma grids the run will sample on (`sigmas train:`
and `sigmas eval:` lines), so a grid can be compared with a reference implementation's by eye.

The parts, each importing only those above it (every public name is also importable from here):
- cluster/preflight_report.py: `Check` and `PreflightReport`, the findings and their summary;
- cluster/preflight_checks.py: the checks of the config and the files it names (prompts, evaluation plan,
  model, scorers and their weights, memory plan, sigma grids);
- cluster/preflight_cluster.py: the checks of the cluster (resources, the sync group's GPUs, every node's
  weights), which the trainer also runs at start-up;
- this module: `preflight`, which runs them all.
"""

from __future__ import annotations

from cluster.config import ExperimentConfig
from cluster.preflight_checks import (
    CONFIG_CHECKS,
    GENEVAL_SCORERS,
    WEIGHT_OPTIONS,
    resolve_path,
    sampling_grids,
)
from cluster.preflight_cluster import (
    check_nodes,
    check_resources,
    check_sync_gpus,
    detect_resources,
    hosting_nodes,
    local_resources,
    resource_demand,
)
from cluster.preflight_report import Check, PreflightReport, Status

__all__ = [
    "GENEVAL_SCORERS", "WEIGHT_OPTIONS", "Check", "PreflightReport", "Status", "check_nodes", "check_resources",
    "check_sync_gpus", "detect_resources", "hosting_nodes", "local_resources", "preflight", "resolve_path",
    "resource_demand", "sampling_grids",
]  # fmt: skip


def preflight(cfg: ExperimentConfig, *, cluster_resources: dict | None = None) -> PreflightReport:
    """Validate a config without loading weights; see the module docstring for what is checked.

    cluster_resources: Ray-style totals ({'CPU': n, 'GPU': m}); None reads the connected Ray
    cluster, else this machine (where a CPU shortfall is only a warning: a local Ray is sized to fit).
    Connected to Ray (and no totals given), the other nodes that load weights are checked too (`check_nodes`).
    """
    local = cluster_resources is None and not _ray_connected()
    if cluster_resources is None:
        cluster_resources, source = detect_resources()
    else:
        source = "the given cluster resources"
    report = PreflightReport(resources_source=source, grids=sampling_grids(cfg))
    for step in CONFIG_CHECKS:
        step(cfg, report)
    check_resources(cfg, report, cluster_resources, local)
    if source == "the connected Ray cluster":
        report.checks += check_nodes(cfg, skip_driver_node=True).checks
    return report


def _ray_connected() -> bool:
    try:
        import ray

        return ray.is_initialized()
    except ImportError:
        return False
