"""Causal engine: per-window analysis, domain mapping, graph store, Ray driver.

    analysis.analyze_window / run_window   one window: lake rows -> causal graph
    ray_driver.analyze_windows             many windows, in-process or as Ray tasks
    explain.explain                        a transaction as a chain, business to kernel
    graph                                  LadybugDB snapshots and named Cypher queries
"""

from kprobe.compute.analysis import WindowAnalysis, WindowOutput, analyze_window, run_window
from kprobe.compute.domain import Rules, load_rules
from kprobe.compute.errors import ComputeError
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.window import Window

__all__ = ["ComputeError", "ComputeSettings", "Rules", "Window", "WindowAnalysis",
           "WindowOutput", "analyze_window", "load_rules", "run_window"]
