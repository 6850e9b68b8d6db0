"""Reading a family's bookkeeping maps from user space (shared by the families)."""

from __future__ import annotations

import numpy as np

from kprobe.capture_agent import libbpf
from kprobe.capture_agent.errors import BpfMapError


def read_percpu(fd: int, value_dtype: np.dtype, name: str) -> np.ndarray:
    """Key 0 of a one-entry per-CPU array: one value per possible CPU (index = CPU)."""
    cpus = libbpf.possible_cpus()
    stride = (value_dtype.itemsize + 7) // 8 * 8
    try:
        raw = libbpf.map_lookup(fd, b"\0\0\0\0", stride * cpus)
    except OSError as e:
        raise BpfMapError(f"map {name}: {e.strerror}", e.errno or 0) from None
    if raw is None:
        return np.zeros(0, value_dtype)
    per_cpu = np.frombuffer(raw, np.uint8).reshape(cpus, stride)[:, :value_dtype.itemsize]
    return np.ascontiguousarray(per_cpu).view(value_dtype).ravel()
