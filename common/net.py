"""Where flowray's own listeners bind: the learner group's rendezvous (learner/engine.py) and the
weight-sync group's (common/collective.py), each a torch TCPStore plus gloo's (or NCCL's) pair listeners.

One rule, `bind_address`: loopback for a run on one node, this node's own address when the run spans
several. Ray's own ports are Ray's to configure (README, Security).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from datetime import timedelta

import torch

LOOPBACK = "127.0.0.1"


def bind_address(spans_nodes: bool) -> str:
    """The address flowray's listeners bind to and their peers connect to. A single-node run has no peer
    beyond this host, so its rendezvous and collective listeners stay on loopback: they accept whoever
    connects (a TCPStore lets any client read and write the group's keys), and a run on a shared or
    public network must not offer them to it. Only a run whose actors span several nodes needs an
    address the other nodes reach: this node's, as Ray knows it, never a wildcard."""
    if not spans_nodes:
        return LOOPBACK
    import ray

    return ray.util.get_node_ip_address()


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def member_address(master_addr: str) -> str:
    """The address a group member other than the master binds its own pair listener to: loopback when the
    group's master is on loopback (a single-node run), else this node's own address."""
    return bind_address(spans_nodes=not is_loopback(master_addr))


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free right now on `host` (rank 0 publishes it to the others)."""
    with socket.socket(_family(host)) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tcp_store(host: str, port: int, world_size: int, is_master: bool, timeout: timedelta) -> torch.distributed.Store:
    """torch's TCPStore with its server (the master's) listening on `host` only. Given no socket, TCPStore's
    server binds every interface (`::`) whatever `host` says (measured, torch 2.13), so the master binds
    one here and hands its descriptor over (`master_listen_fd`: the store owns and closes it)."""
    import torch.distributed as dist

    if not is_master:
        return dist.TCPStore(host, port, world_size, is_master=False, timeout=timeout)
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port a closed group left in TIME_WAIT
        sock.bind((host, port))
        sock.listen(max(128, world_size))
    except OSError:
        sock.close()
        raise
    return dist.TCPStore(host, port, world_size, is_master=True, timeout=timeout, master_listen_fd=sock.detach())


def pin_transport_interfaces(address: str, device: torch.device) -> None:
    """Make the collectives' own listeners bind `address`'s interface: gloo's default device (the one
    init_process_group builds) otherwise binds whatever this host's name resolves to, and NCCL's bootstrap
    the first non-loopback interface. A value the user exported is kept. NCCL is pinned on loopback only:
    across nodes its interface choice (InfiniBand first) is the user's NCCL configuration."""
    interface = interface_of(address)
    if interface is None:
        return
    os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
    if device.type == "cuda" and is_loopback(address):
        os.environ.setdefault("NCCL_SOCKET_IFNAME", interface)


def interface_of(address: str) -> str | None:
    """The name of the network interface holding `address` ('lo' for 127.0.0.1 on Linux), or None."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == address for a in addrs):
            return name
    return None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
