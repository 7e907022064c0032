"""The run's storage path (`logging.output_dir`): resolved once on the driver, checked on every learner.

Following Ray Train's convention (RunConfig.storage_path): one location that the driver and every
learner rank write, which on a multi-node cluster must be a shared filesystem. Each learner rank
writes its own checkpoint shard (optimizer_rank<r>) into the folder the driver then publishes, so a
path that means different disks on different nodes silently loses shards.

How a relative path resolves: against the directory the driver started in. Under `ray job submit
--working-dir DIR` that directory is Ray's unpacked copy of DIR (under the session's
runtime_resources), deleted with the job and different on each node, and the directory the user
submitted from may not exist on the cluster at all. There a relative path resolves under
`~/flowray_results/` on the driver's node instead (as Ray Train's default `~/ray_results`), and the
driver prints where; give an absolute path on shared storage for a multi-node run.

Cloud URIs (s3://, gs://) are not written directly: mount the bucket (s3fs, gcsfuse, ...) on every
node and give the mount path.
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

JOB_RESULTS = Path("~/flowray_results")
SENTINEL_DIR = ".flowray_storage_check"


class StorageError(ValueError):
    """`logging.output_dir` cannot serve as the run's storage; the message names the key."""


def in_ray_working_dir_copy(cwd: Path) -> bool:
    """Whether `cwd` is Ray's unpacked copy of a job's working_dir (runtime_resources/working_dir_files)."""
    return "runtime_resources" in cwd.parts and "working_dir_files" in cwd.parts


def resolve_output_dir(path: str, cwd: Path | None = None) -> str:
    """The absolute storage path for `logging.output_dir` (see the module docstring for the rules)."""
    if "://" in path:
        raise StorageError(
            f"logging.output_dir={path!r}: cloud URIs are not written directly; mount the bucket on every node "
            "(s3fs, gcsfuse, ...) and give the mount path"
        )
    p = Path(path).expanduser()
    if p.is_absolute():
        return str(p)
    cwd = cwd if cwd is not None else Path.cwd()
    base = JOB_RESULTS.expanduser() if in_ray_working_dir_copy(cwd) else cwd
    return str((base / p).resolve())


def write_sentinel(output_dir: str) -> tuple[str, str]:
    """The driver writes a fresh random token under the storage path; returns (file, token)."""
    folder = Path(output_dir) / SENTINEL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    path = folder / f"{token}.txt"
    path.write_text(token)
    return str(path), token


def check_sentinel(path: str, token: str, who: str) -> None:
    """On a learner rank: the driver's sentinel must be visible here with the same token, and the folder
    writable; otherwise a StorageError that names logging.output_dir, the file and this node."""
    where = f"{who} on {socket.gethostname()}"
    try:
        seen = Path(path).read_text()
    except OSError:
        seen = None
    if seen != token:
        raise StorageError(
            f"logging.output_dir is not shared storage: {where} does not see {path}, which the driver wrote "
            "(each node resolved its own disk). On a multi-node cluster give an absolute path on a shared "
            "filesystem (NFS, a mounted bucket) that every node mounts at the same place"
        )
    probe = Path(path).with_name(f"{token}.{who}.{os.getpid()}")
    try:
        probe.write_text(who)
        probe.unlink()
    except OSError as err:
        raise StorageError(f"logging.output_dir is not writable from {where}: {err}") from None


def remove_sentinel(path: str) -> None:
    Path(path).unlink(missing_ok=True)
    try:
        Path(path).parent.rmdir()
    except OSError:  # another run's check is in progress, or the folder is not empty
        pass
