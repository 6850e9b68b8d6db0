"""The graph store: one LadybugDB database per window, kept beside the lake.

Layout: ``{lake root}/graphs/{window id}/graph.lbug`` and ``manifest.json`` (format,
version, window, counts, engine version). A snapshot is built in a private temporary
directory, closed (so the engine checkpoints into the one database file), then published:

- ``file://`` lakes: the finished directory is renamed into place (atomic on one file
  system; an existing snapshot of the window is swapped out and removed).
- ``s3://`` lakes: the database file is uploaded, then the manifest, which is what readers
  look for, so a reader never opens a half-uploaded snapshot. Readers download a snapshot
  once into ``graph_cache_dir`` (keyed by its manifest's creation time) and open it there.

Readers open snapshots read-only (LadybugDB allows read-only opens while another process
writes), so a stateless API or CLI can query any window. All LadybugDB access of the
project goes through this package.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import ladybug
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from kprobe import lake
from kprobe.compute.errors import GraphError, GraphNotFound, QueryNotFound
from kprobe.compute.graph.schema import (
    GRAPH_FORMAT,
    GRAPH_VERSION,
    NODE_TABLES,
    REL_PROPERTIES,
    REL_TABLES,
    ddl,
    node_schema,
)
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.window import Window
from kprobe.lake import one_line

DB_FILE = "graph.lbug"
MANIFEST = "manifest.json"
GRAPHS_DIR = "graphs"


@dataclass(frozen=True)
class SnapshotInfo:
    window: Window
    uri: str  # the snapshot directory
    manifest: dict[str, Any]

    @property
    def window_id(self) -> str:
        return self.window.id


# -- writing --------------------------------------------------------------------------------
def build(tables: dict[str, pa.Table], directory: Path, settings: ComputeSettings) -> dict[
        str, int]:
    """Create ``directory/graph.lbug`` from the window's Arrow tables; return row counts."""
    directory.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    db = _database(directory / DB_FILE, settings, read_only=False)
    try:
        con = ladybug.Connection(db)
        try:
            for statement in ddl():
                con.execute(statement)
            ids: dict[str, pa.Array] = {}
            for label in NODE_TABLES:
                table = _conform(tables.get(label), node_schema(label))
                table = _unique_ids(table)
                ids[label] = table.column("id").combine_chunks()
                counts[label] = table.num_rows
                if table.num_rows:
                    _copy(con, label, table, "")
            counts.update(_copy_rels(con, tables.get("rels"), ids))
        finally:
            con.close()
    except RuntimeError as err:
        raise GraphError(f"building the graph failed: {one_line(err)}") from err
    finally:
        db.close()
    return counts


def _copy(con: ladybug.Connection, table_name: str, data: pa.Table, options: str) -> None:
    # LadybugDB scans a Python object named in the statement (it looks the name up in the
    # caller's frame): `data` here.
    con.execute(f"COPY {table_name} FROM data{options}")


def _copy_rels(con: ladybug.Connection, rels: pa.Table | None,
               ids: dict[str, pa.Array]) -> dict[str, int]:
    counts: dict[str, int] = {}
    if rels is None or rels.num_rows == 0:
        return {rel: 0 for rel in REL_TABLES}
    props = [name for name, _ in REL_PROPERTIES]
    for rel, pairs in REL_TABLES.items():
        total = 0
        for src_label, dst_label in pairs:
            mask = pc.and_(pc.and_(pc.equal(rels["rel"], rel),
                                   pc.equal(rels["src_label"], src_label)),
                           pc.equal(rels["dst_label"], dst_label))
            part = rels.filter(mask)
            # Both ends must exist as nodes (an edge to a node the window did not keep
            # would make the whole COPY fail).
            part = part.filter(pc.and_(pc.is_in(part["src"], value_set=ids[src_label]),
                                       pc.is_in(part["dst"], value_set=ids[dst_label])))
            if part.num_rows == 0:
                continue
            data = pa.table({"from": part["src"], "to": part["dst"],
                             **{name: part[name] for name in props}})
            options = f" (from='{src_label}', to='{dst_label}')" if len(pairs) > 1 else ""
            _copy(con, rel, data, options)
            total += part.num_rows
        counts[rel] = total
    return counts


def _conform(table: pa.Table | None, schema: pa.Schema) -> pa.Table:
    if table is None:
        return schema.empty_table()
    columns = []
    for field in schema:
        if field.name in table.column_names:
            columns.append(table.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _unique_ids(table: pa.Table) -> pa.Table:
    """Drop rows without an id and keep the first row of each id (vectorised)."""
    if table.num_rows == 0:
        return table
    table = table.filter(pc.is_valid(table["id"]))
    if pc.count_distinct(table["id"]).as_py() == table.num_rows:
        return table
    index = pa.array(np.arange(table.num_rows, dtype=np.int64))
    firsts = pa.table({"id": table["id"], "i": index}).group_by(
        "id", use_threads=False).aggregate([("i", "min")])["i_min"]
    return table.take(pc.take(firsts, pc.sort_indices(firsts)))


def publish(location: lake.LakeLocation, window: Window, tables: dict[str, pa.Table],
            settings: ComputeSettings, inputs: dict[str, int] | None = None) -> str:
    """Build the window's snapshot and put it where readers find it; returns its URI.

    ``inputs``: what the analysis read (``owned_spans``), kept in the manifest."""
    manifest: dict[str, Any] = {
        "format": GRAPH_FORMAT, "version": GRAPH_VERSION, "window": window.id,
        "start_ns": window.start_ns, "end_ns": window.end_ns, "nodes": list(window.nodes),
        "created_ns": time.time_ns(), "engine": f"ladybug {ladybug.__version__}",
        **({"inputs": dict(inputs)} if inputs is not None else {}),
    }
    if location.scheme == "file":
        graphs = location.local_path / GRAPHS_DIR
        graphs.mkdir(parents=True, exist_ok=True)
        staging = graphs / f".staging-{window.id}-{uuid.uuid4().hex[:8]}"
        try:
            manifest["counts"] = build(tables, staging, settings)
            _write_manifest(staging, manifest)
            target = graphs / window.id
            if target.exists():
                old = graphs / f".old-{window.id}-{uuid.uuid4().hex[:8]}"
                os.rename(target, old)
                os.rename(staging, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(staging, target)
        except OSError as err:
            raise GraphError(f"cannot write the graph snapshot under {graphs}: {err}"
                             ) from err
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return location.path_uri(GRAPHS_DIR, window.id)
    with tempfile.TemporaryDirectory(prefix="kprobe-graph-") as tmp:
        manifest["counts"] = build(tables, Path(tmp), settings)
        _write_manifest(Path(tmp), manifest)
        fs, base = lake.filesystem(location)
        prefix = f"{base}/{GRAPHS_DIR}/{window.id}"
        try:
            fs.create_dir(prefix, recursive=True)
            for name in sorted(os.listdir(tmp), key=lambda n: n == MANIFEST):  # manifest last
                with open(Path(tmp) / name, "rb") as src, fs.open_output_stream(
                        f"{prefix}/{name}") as dst:
                    shutil.copyfileobj(src, dst, 4 << 20)
        except OSError as err:
            raise GraphError(f"cannot upload the graph snapshot to {location.root}: "
                             f"{one_line(err)}") from err
    return location.path_uri(GRAPHS_DIR, window.id)


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


# -- reading --------------------------------------------------------------------------------
def list_snapshots(location: lake.LakeLocation) -> list[SnapshotInfo]:
    """Every published snapshot of the lake, oldest window first."""
    found: list[SnapshotInfo] = []
    if location.scheme == "file":
        graphs = location.local_path / GRAPHS_DIR
        if not graphs.is_dir():
            return []
        for entry in graphs.iterdir():
            if entry.name.startswith(".") or not (entry / MANIFEST).is_file():
                continue
            info = _info(entry.name, json.loads((entry / MANIFEST).read_text("utf-8")),
                         location.path_uri(GRAPHS_DIR, entry.name))
            if info:
                found.append(info)
    else:
        fs, base = lake.filesystem(location)
        try:
            entries = fs.get_file_info(pafs.FileSelector(f"{base}/{GRAPHS_DIR}",
                                                         allow_not_found=True))
            for entry in entries:
                if entry.type != pafs.FileType.Directory:
                    continue
                name = entry.base_name
                try:
                    with fs.open_input_stream(f"{entry.path}/{MANIFEST}") as stream:
                        manifest = json.loads(stream.read())
                except (FileNotFoundError, OSError):
                    continue  # not (yet) published
                info = _info(name, manifest, location.path_uri(GRAPHS_DIR, name))
                if info:
                    found.append(info)
        except OSError as err:
            raise GraphError(f"cannot list graph snapshots: {one_line(err)}") from err
    return sorted(found, key=lambda i: (i.window.start_ns, i.window.id))


def _info(name: str, manifest: dict[str, Any], uri: str) -> SnapshotInfo | None:
    if manifest.get("format") != GRAPH_FORMAT:
        return None
    if manifest.get("version") != GRAPH_VERSION:
        raise GraphError(f"graph snapshot {name} has format version {manifest.get('version')};"
                         f" this kprobe reads version {GRAPH_VERSION} (re-run kprobe analyze)")
    try:
        window = Window.parse(name)
    except Exception:  # noqa: BLE001 - a foreign directory is not a snapshot
        return None
    return SnapshotInfo(window, uri, manifest)


def select_snapshots(location: lake.LakeLocation, *, window_ids: list[str] | None = None,
                     start_ns: int | None = None, end_ns: int | None = None,
                     ) -> list[SnapshotInfo]:
    """Snapshots by window id, or those overlapping [start_ns, end_ns); GraphNotFound if none."""
    snaps = list_snapshots(location)
    if window_ids:
        wanted = set(window_ids)
        snaps = [s for s in snaps if s.window_id in wanted]
        missing = wanted - {s.window_id for s in snaps}
        if missing:
            raise GraphNotFound(f"no graph snapshot for window {sorted(missing)[0]} "
                                f"(run kprobe analyze for it)")
    if start_ns is not None:
        snaps = [s for s in snaps if s.window.end_ns > start_ns]
    if end_ns is not None:
        snaps = [s for s in snaps if s.window.start_ns < end_ns]
    if not snaps:
        raise GraphNotFound(f"no graph snapshots in {location.root}/{GRAPHS_DIR} for that "
                            "range (run kprobe analyze first)")
    return snaps


class GraphReader:
    """A read-only connection to one window's snapshot."""

    def __init__(self, info: SnapshotInfo, db: ladybug.Database) -> None:
        self.info = info
        self._db = db
        self._con = ladybug.Connection(db)

    def query(self, cypher: str, params: dict[str, Any] | None = None) -> pa.Table:
        try:
            result = self._con.execute(cypher, params or {})
            if isinstance(result, list):  # several statements: the last one answers
                result = result[-1]
            table = result.get_as_arrow()
        except RuntimeError as err:
            raise QueryNotFound(f"graph query failed: {one_line(err)}") from err
        return table

    def rows(self, cypher: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.query(cypher, params).to_pylist()
        return rows

    def interrupt(self) -> None:
        """Stop the statement running on this reader (called from another thread)."""
        self._con.interrupt()

    def close(self) -> None:
        self._con.close()
        self._db.close()


@contextmanager
def open_snapshot(location: lake.LakeLocation, info: SnapshotInfo,
                  settings: ComputeSettings) -> Iterator[GraphReader]:
    with open_snapshot_file(info, snapshot_file(location, info, settings), settings) as reader:
        yield reader


def snapshot_file(location: lake.LakeLocation, info: SnapshotInfo,
                  settings: ComputeSettings) -> Path:
    """The snapshot's database file on this machine (an object-store snapshot is downloaded
    into ``graph_cache_dir`` once)."""
    if location.scheme == "file":
        return Path(urlparse(info.uri).path) / DB_FILE
    return _cached(location, info, settings)


def readable_roots(location: lake.LakeLocation, settings: ComputeSettings) -> list[Path]:
    """The directories every ``snapshot_file`` of this lake lies under."""
    if location.scheme == "file":
        return [location.local_path / GRAPHS_DIR]
    return [settings.graph_cache_dir]


@contextmanager
def open_snapshot_file(info: SnapshotInfo, path: Path,
                       settings: ComputeSettings) -> Iterator[GraphReader]:
    """A read-only reader of the snapshot's database file ``path`` (``snapshot_file``)."""
    if not path.is_file():
        raise GraphNotFound(f"graph snapshot {info.window_id} has no database file")
    try:
        db = _database(path, settings, read_only=True)
    except RuntimeError as err:
        raise GraphError(f"cannot open graph snapshot {info.window_id}: {one_line(err)}"
                         ) from err
    reader = GraphReader(info, db)
    try:
        yield reader
    finally:
        reader.close()


def _cached(location: lake.LakeLocation, info: SnapshotInfo,
            settings: ComputeSettings) -> Path:
    key = hashlib.sha256(info.uri.encode()).hexdigest()[:16]
    directory = settings.graph_cache_dir / key / str(info.manifest.get("created_ns", 0))
    path = directory / DB_FILE
    if path.is_file():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    fs, base = lake.filesystem(location)
    remote = f"{base}/{GRAPHS_DIR}/{info.window_id}/{DB_FILE}"
    partial = directory / f".{DB_FILE}.{uuid.uuid4().hex[:8]}"
    try:
        with fs.open_input_stream(remote) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, 4 << 20)
        os.replace(partial, path)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise GraphError(f"cannot download graph snapshot {info.window_id}: {one_line(err)}"
                         ) from err
    return path


# -- helpers --------------------------------------------------------------------------------
def _database(path: Path, settings: ComputeSettings, *, read_only: bool) -> ladybug.Database:
    return ladybug.Database(str(path), read_only=read_only,
                            buffer_pool_size=settings.graph_buffer_pool_mb << 20)
