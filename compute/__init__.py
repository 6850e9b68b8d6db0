"""Causal engine: per-window analysis, domain mapping, graph store, Ray driver.

    analysis.analyze_window / run_window   one window: lake rows -> causal graph
    ray_driver.analyze_windows             many windows, in-process or as Ray tasks
    explain.explain                        a transaction as a chain, business to kernel
    graph                                  LadybugDB snapshots and named Cypher queries
"""

from compute.analysis import WindowAnalysis, WindowOutput, analyze_window, run_window
from compute.domain import Rules, load_rules
from compute.errors import ComputeError
from compute.settings import ComputeSettings
from compute.window import Window

__all__ = ["ComputeError", "ComputeSettings", "Rules", "Window", "WindowAnalysis",
           "WindowOutput", "analyze_window", "load_rules", "run_window"]
