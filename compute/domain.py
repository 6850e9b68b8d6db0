"""Financial domain mapping: spans -> Payment, RiskCheck, SettlementWrite, LedgerWrite,
OrderBookOp (with business ids), deadlines, failures and the clearing-window schedule.

The rules (``domain_rules.yaml`` beside this module, or a file given by path) become one
SQL statement: each concept's match is a boolean expression over name, service, kind and
the attributes JSON; the business id a ``coalesce`` of attribute lookups. Cutoff instants
of the clearing schedule are computed for the days the window touches (with the schedule's
time zone) and joined with an ASOF join, so no Python runs per span.

Output ``span_domain`` (one row per service span):
    span_key, concept, business_id, txn_id, deadline_ns, failed, failure_kind
    ('error' | 'timeout'), over_ns (how late against the deadline), labels, and the
    clearing cutoff the operation ran across (cutoff_ns, cutoff_label, missed_by_ns)
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import duckdb
import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kprobe.compute.errors import RulesError
from kprobe.compute.sql import execute, sql_list, sql_str
from kprobe.lake import one_line

DEFAULT_RULES = Path(__file__).with_name("domain_rules.yaml")
_UNIT_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_KEY_OK = re.compile(r'^[^"\\]+$')


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(f"bad regular expression {value!r}: {err}") from None
    return value


def _check_keys(keys: list[str] | None) -> list[str] | None:
    for key in keys or []:
        if not _KEY_OK.match(key):
            raise ValueError(f"attribute key {key!r} may not contain quotes or backslashes")
    return keys


class Match(_Model):
    name: str | None = None
    service: str | None = None
    kind: list[str] | None = None
    attributes: list[str] | None = None

    _regex = field_validator("name", "service")(_check_regex)
    _keys = field_validator("attributes")(_check_keys)


class Concept(_Model):
    concept: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    match: list[Match] = Field(min_length=1)
    id_attributes: list[str] = Field(default_factory=list)
    started: str | None = None
    completed: str | None = None
    failed: str | None = None
    transaction: bool = False
    deadline_ms: float | None = Field(default=None, gt=0)

    _keys = field_validator("id_attributes")(_check_keys)


class Operation(_Model):
    service: str | None = None
    name: str | None = None
    deadline_ms: float = Field(gt=0)

    _regex = field_validator("name", "service")(_check_regex)


class DeadlineAttribute(_Model):
    key: str
    unit: Literal["ns", "us", "ms", "s"] = "ms"

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        _check_keys([value])
        return value


class Clearing(_Model):
    timezone: str = "UTC"
    cutoffs: list[str] = Field(default_factory=list)
    applies_to: list[str] = Field(default_factory=list)

    @field_validator("cutoffs")
    @classmethod
    def _cutoffs(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                time.fromisoformat(value)
            except ValueError:
                raise ValueError(f"cutoff {value!r} is not a time of day like 14:00") from None
        return values

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class ProcessRole(_Model):
    match: str
    role: str

    _regex = field_validator("match")(_check_regex)


class Rules(_Model):
    version: Literal[1]
    timeout_pattern: str = r"(?i)(time[d]?[ -]?out|deadline[ _]exceeded)"
    deadline_attributes: list[DeadlineAttribute] = Field(default_factory=list)
    concepts: list[Concept] = Field(default_factory=list)
    operations: list[Operation] = Field(default_factory=list)
    clearing: Clearing | None = None
    process_roles: list[ProcessRole] = Field(default_factory=list)

    _regex = field_validator("timeout_pattern")(_check_regex)


def load_rules(path: Path | str | None = None) -> Rules:
    """The rules at ``path`` (default: the shipped defaults); RulesError says what is wrong."""
    return _load(str(path or DEFAULT_RULES))


@lru_cache(maxsize=8)
def _load(path: str) -> Rules:
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as err:
        raise RulesError(f"cannot read rules {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise RulesError(f"rules {path} are not valid YAML: {one_line(err, 1000)}") from None
    try:
        return Rules.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise RulesError(f"rules {path}: {where}: {first['msg']}") from None


# -- SQL ------------------------------------------------------------------------------------
def _attr(key: str) -> str:
    path = '$."' + key + '"'
    return f"json_extract_string(attributes, {sql_str(path)})"


def _match_sql(match: Match) -> str:
    parts = []
    if match.name is not None:
        parts.append(f"regexp_matches(coalesce(name, ''), {sql_str(match.name)})")
    if match.service is not None:
        parts.append(f"regexp_matches(coalesce(service, ''), {sql_str(match.service)})")
    if match.kind:
        parts.append(f"kind IN {sql_list(match.kind)}")
    if match.attributes:
        parts.append("(" + " OR ".join(f"{_attr(k)} IS NOT NULL" for k in match.attributes)
                     + ")")
    return "(" + (" AND ".join(parts) or "true") + ")"


def _label(template: str | None) -> str:
    if not template:
        return "NULL"
    return (f"replace(replace(replace({sql_str(template)}, '{{id}}', "
            f"coalesce(business_id, txn_id, '?')), '{{service}}', coalesce(service, '?')), "
            f"'{{name}}', coalesce(name, '?'))")


def _case(pairs: list[tuple[str, str]], default: str = "NULL") -> str:
    if not pairs:
        return default
    whens = " ".join(f"WHEN {cond} THEN {value}" for cond, value in pairs)
    return f"CASE {whens} ELSE {default} END"


def cutoffs_table(rules: Rules, lo_ns: int, hi_ns: int) -> pa.Table:
    """Every cutoff instant of the clearing schedule from a day before lo to a day after hi."""
    clearing = rules.clearing
    instants: list[int] = []
    labels: list[str] = []
    if clearing and clearing.cutoffs:
        tz = ZoneInfo(clearing.timezone)
        day = datetime.fromtimestamp(lo_ns / 1e9, tz=UTC).astimezone(tz).date()
        last = datetime.fromtimestamp(hi_ns / 1e9, tz=UTC).astimezone(tz).date()
        day -= timedelta(days=1)
        while day <= last + timedelta(days=1):
            for text in clearing.cutoffs:
                local = datetime.combine(day, time.fromisoformat(text), tzinfo=tz)
                instants.append(int(local.timestamp()) * 1_000_000_000)
                suffix = "" if clearing.timezone == "UTC" else f" {clearing.timezone}"
                labels.append(f"{time.fromisoformat(text).strftime('%H:%M')}{suffix}")
            day += timedelta(days=1)
    return pa.table({"cutoff_ns": pa.array(instants, pa.int64()),
                     "cutoff_label": pa.array(labels, pa.string())}).sort_by("cutoff_ns")


def build(con: duckdb.DuckDBPyConnection, rules: Rules, lo_ns: int, hi_ns: int) -> None:
    concept = _case([(" OR ".join(_match_sql(m) for m in c.match), sql_str(c.concept))
                     for c in rules.concepts])
    business_id = _case([
        (f"concept = {sql_str(c.concept)}",
         "coalesce(" + ", ".join([*(_attr(k) for k in c.id_attributes), "NULL"]) + ")")
        for c in rules.concepts if c.id_attributes])
    txn_concepts = [c.concept for c in rules.concepts if c.transaction]
    attr_deadline = ("coalesce(" + ", ".join(
        [*(f"TRY_CAST({_attr(a.key)} AS DOUBLE) * {_UNIT_NS[a.unit]}"
           for a in rules.deadline_attributes), "NULL"]) + ")")
    op_deadline = _case([(_match_sql(Match(name=o.name, service=o.service)),
                          f"{o.deadline_ms * 1e6}") for o in rules.operations])
    concept_deadline = _case([(f"concept = {sql_str(c.concept)}", f"{c.deadline_ms * 1e6}")
                              for c in rules.concepts if c.deadline_ms])
    labels = {
        moment: _case([(f"concept = {sql_str(c.concept)}", _label(getattr(c, moment)))
                       for c in rules.concepts])
        for moment in ("started", "completed", "failed")}
    applies = (rules.clearing.applies_to if rules.clearing else [])
    con.register("clearing_cutoffs_arrow", cutoffs_table(rules, lo_ns, hi_ns))
    execute(con, "domain mapping", """
        CREATE TEMP TABLE clearing_cutoffs AS SELECT * FROM clearing_cutoffs_arrow
    """, f"""
        CREATE TEMP TABLE d_mapped AS
        SELECT *, {business_id} AS business_id FROM (
            SELECT span_key, trace_id, service, name, kind, s, e, status, status_message,
                   events, attributes, {concept} AS concept
            FROM spans_all WHERE origin = 'otel')
    """, f"""
        CREATE TEMP TABLE d_txn AS
        SELECT trace_id,
               coalesce(arg_min(business_id, s) FILTER (
                            WHERE concept IN {sql_list(txn_concepts)}
                              AND business_id IS NOT NULL),
                        arg_min(business_id, s) FILTER (WHERE business_id IS NOT NULL))
                 AS txn_id
        FROM d_mapped GROUP BY trace_id
    """, f"""
        CREATE TEMP TABLE span_domain AS
        WITH d AS (
            SELECT m.*, t.txn_id,
                   CAST(coalesce({attr_deadline}, {op_deadline}, {concept_deadline})
                        AS BIGINT) AS deadline_ns,
                   regexp_matches(coalesce(status_message, '') || ' ' || coalesce(events, ''),
                                  {sql_str(rules.timeout_pattern)}) AS timeout_text
            FROM d_mapped m LEFT JOIN d_txn t USING (trace_id)),
        f AS (
            SELECT *,
                   (status = 'ERROR' OR timeout_text
                    OR (deadline_ns IS NOT NULL AND e - s > deadline_ns)) AS failed,
                   CASE WHEN timeout_text OR (deadline_ns IS NOT NULL AND e - s > deadline_ns)
                        THEN 'timeout'
                        WHEN status = 'ERROR' THEN 'error' END AS failure_kind,
                   CASE WHEN deadline_ns IS NOT NULL THEN greatest(e - s - deadline_ns, 0)
                        END AS over_ns
            FROM d)
        SELECT f.span_key, f.concept, f.business_id, f.txn_id, f.deadline_ns, f.failed,
               f.failure_kind, f.over_ns,
               {labels["started"]} AS label_started,
               {labels["completed"]} AS label_completed,
               {labels["failed"]} AS label_failed,
               CASE WHEN f.missed THEN f.cutoff_ns END AS cutoff_ns,
               CASE WHEN f.missed THEN f.cutoff_label END AS cutoff_label,
               CASE WHEN f.missed THEN f.e - f.cutoff_ns END AS missed_by_ns
        FROM (SELECT f.*, c.cutoff_ns, c.cutoff_label,
                     coalesce(c.cutoff_ns < f.e AND f.concept IN {sql_list(applies)}, false)
                       AS missed
              FROM f ASOF LEFT JOIN clearing_cutoffs c ON f.s < c.cutoff_ns) f
    """, "DROP TABLE d_mapped", "DROP TABLE d_txn")
    con.unregister("clearing_cutoffs_arrow")


def process_role_sql(rules: Rules, text: str) -> str:
    """A SQL expression naming a process's role from ``text`` (comm, exe and argv)."""
    return _case([(f"regexp_matches({text}, {sql_str(r.match)})", sql_str(r.role))
                  for r in rules.process_roles])
