"""What the running kernel offers BPF programs, read from its own BTF.

A ``tp_btf/<name>`` program needs the kernel's ``btf_trace_<name>`` type (the tracepoint
exists), an ``fentry/<fn>``/``fexit/<fn>`` program the function ``fn``: libbpf refuses the
whole object when one is missing, so the sensor asks here first and loads a family's
fallback program instead (``Family.fallbacks``).
"""

from __future__ import annotations

import functools
from pathlib import Path

from kprobe.capture_agent import libbpf

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")


@functools.lru_cache(maxsize=1)
def _vmlinux() -> libbpf.Btf | None:
    try:
        return libbpf.Btf(str(VMLINUX_BTF))  # kept for the process's life (5 MB)
    except OSError:
        return None


def tracepoint_args(name: str) -> int | None:
    """How many arguments the kernel's tracepoint ``name`` passes (None: no such
    tracepoint, or no kernel BTF). Tracepoints gain arguments between kernels."""
    btf = _vmlinux()
    if btf is None:
        return None
    params = btf.typedef_func_params(f"btf_trace_{name}")
    return None if params is None else params - 1  # the first is the context pointer


def attach_point_exists(section: str) -> bool | None:
    """Whether the program section's attach point exists here; None: unknown (no kernel
    BTF, or a kind of section this does not check)."""
    kind, _, target = section.partition("/")
    btf = _vmlinux()
    if btf is None or not target:
        return None
    if kind == "tp_btf":
        return btf.has(f"btf_trace_{target}", libbpf.BTF_KIND_TYPEDEF)
    if kind in ("fentry", "fexit", "fmod_ret"):
        return btf.has(target, libbpf.BTF_KIND_FUNC)
    return None
