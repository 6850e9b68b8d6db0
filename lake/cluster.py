"""Joining or starting the Ray cluster: one way, for every package that runs work on Ray
(the causal engine's windows, replay fuzzing, the API's replay jobs).

It lives in ``lake`` because ``lake`` is the one package every layer may import
(ARCHITECTURE.md, "Layers"); Ray itself is imported only when a caller connects.

``connect_ray(address)``: an address (``host:port``, ``ray://…``, ``auto``) or
``RAY_ADDRESS`` joins that cluster; neither (or ``local``) starts one of our own, sized by
``num_cpus`` and ``object_store_bytes`` (Ray refuses sizes when joining). Its node address
is 127.0.0.1, but Ray 2.60's GCS still listens on every interface while it runs: what keeps
others out is Ray's token authentication, on by default (``RAY_AUTH_MODE`` unset), which
kprobe never turns off (``RAY_AUTH_MODE=disabled`` in the environment would: starting a
cluster of our own that way logs a warning naming the exposure). A process
already connected stays as it is. An address nobody answers on fails within seconds (Ray
itself retries for minutes); every failure is one ``ClusterUnavailable`` line.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from typing import Any

from kprobe.lake.errors import ClusterUnavailable, one_line

_HOST_PORT = re.compile(r"^(?:ray://)?\[?([^\]/]+?)\]?:(\d+)$")


def ray_address(address: str | None) -> str | None:
    """The cluster ``address`` names, else ``RAY_ADDRESS``, else None (a cluster of our
    own)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def check_reachable(address: str | None, timeout_s: float = 3.0) -> None:
    """Fail fast on a ``host:port`` nobody answers on; other forms are Ray's business."""
    match = _HOST_PORT.match(address or "")
    if not match:
        return
    try:
        socket.create_connection((match[1], int(match[2])), timeout=timeout_s).close()
    except OSError as err:
        raise ClusterUnavailable(f"cannot reach Ray at {address}: {err.strerror or err}"
                                 ) from None


def unauthenticated_refusal(address: str | None) -> str | None:
    """Why a cluster of our own is not started: ``RAY_AUTH_MODE=disabled`` would open it to
    anyone who reaches its ports (None: Ray's token authentication is on, or we join)."""
    if address not in (None, "local"):
        return None  # joining: the cluster's own settings decide
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() != "disabled":
        return None
    return ("RAY_AUTH_MODE=disabled: kprobe does not start a Ray cluster without "
            "authentication (its GCS listens on every interface: anyone who reaches its "
            "ports could run code as this user); unset RAY_AUTH_MODE to keep Ray's token "
            "authentication, or start a cluster yourself and give its address")


def init_kwargs(address: str | None, *, num_cpus: int | None = None,
                object_store_bytes: int | None = None) -> dict[str, Any]:
    """``ray.init``'s arguments for ``address`` (already resolved by ``ray_address``)."""
    kwargs: dict[str, Any] = {"address": address, "include_dashboard": False,
                              "log_to_driver": False, "configure_logging": False}
    if address in (None, "local"):  # a cluster of our own, sized for the job (token auth)
        if num_cpus:
            kwargs["num_cpus"] = num_cpus
        if object_store_bytes:
            kwargs["object_store_memory"] = object_store_bytes
        kwargs["_node_ip_address"] = "127.0.0.1"
    return kwargs


def connect_ray(address: str | None, *, num_cpus: int | None = None,
                object_store_bytes: int | None = None) -> bool:
    """Join or start the cluster (module doc); True when this call connected, so the
    caller shuts Ray down when done, False when the process already was connected."""
    loaded = sys.modules.get("ray")
    if loaded is not None and loaded.is_initialized():
        return False
    where = ray_address(address)
    check_reachable(where)
    refusal = unauthenticated_refusal(where)
    if refusal:  # before Ray is imported: its import fixes the auth mode for the process
        raise ClusterUnavailable(refusal)
    import ray

    try:
        ray.init(**init_kwargs(where, num_cpus=num_cpus, object_store_bytes=object_store_bytes))
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ClusterUnavailable(f"cannot start or reach Ray at {where or 'a local cluster'}:"
                                 f" {one_line(err)}") from err
    return True


__all__ = ["check_reachable", "connect_ray", "init_kwargs", "ray_address",
           "unauthenticated_refusal"]
