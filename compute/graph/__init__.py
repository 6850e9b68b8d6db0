"""The graph store (LadybugDB, the maintained Kùzu fork): all graph access of the project.

``schema`` defines the node and relationship tables once; ``store`` builds a snapshot per
window from Arrow tables, publishes it beside the lake and opens snapshots read-only;
``queries`` holds the named Cypher queries and the reads behind ``kprobe explain``.
"""

from kprobe.compute.graph.store import (
    GraphReader,
    SnapshotInfo,
    list_snapshots,
    open_snapshot,
    publish,
    select_snapshots,
)

__all__ = ["GraphReader", "SnapshotInfo", "list_snapshots", "open_snapshot", "publish",
           "select_snapshots"]
