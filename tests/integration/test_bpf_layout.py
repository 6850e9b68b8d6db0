"""The numpy mirrors of the BPF records agree with the compiled objects' BTF.

Tetragon's alignchecker habit: a field moved, resized, renamed or added on one side only
fails here. Needs the compiled objects (``make bpf``), not root.
"""

from __future__ import annotations

import numpy as np
import pytest

from kprobe.capture_agent import libbpf
from kprobe.capture_agent.families import FAMILIES
from kprobe.capture_agent.layouts import COMMON_ENUMS, EVENT_HEADER, Family, layout_differences
from kprobe.capture_agent.sensor import object_path
from tests.support import require

FAMILY_LIST = list(FAMILIES.values())


def _btf(family: Family) -> libbpf.Btf:
    path = object_path(family.object_file)
    require(path.exists(), f"{path} (run `make bpf`)")
    return libbpf.Btf(str(path))


def _c_struct(btf: libbpf.Btf, name: str) -> tuple[list[tuple[str, int, int, str]], int]:
    fields = [(f.name, f.offset, f.size, f.kind) for f in btf.struct_fields(name)]
    return fields, btf.struct_size(name)


@pytest.mark.parametrize("family", FAMILY_LIST, ids=lambda f: f.name)
def test_record_dtypes_match_btf(family: Family) -> None:
    # GIVEN the family's compiled object
    with _btf(family) as btf:
        # WHEN each mirrored struct is compared with its BTF description
        diffs = {
            name: layout_differences(*_c_struct(btf, name), dtype)
            for name, dtype in {"event_header": EVENT_HEADER, **family.structs}.items()
        }
    # THEN nothing differs
    assert {k: v for k, v in diffs.items() if v} == {}


@pytest.mark.parametrize("family", FAMILY_LIST, ids=lambda f: f.name)
def test_enums_match_btf(family: Family) -> None:
    with _btf(family) as btf:
        for name, values in {**COMMON_ENUMS, **family.enums}.items():
            assert btf.enum_values(name) == dict(values), f"enum {name}"


@pytest.mark.parametrize("family", FAMILY_LIST, ids=lambda f: f.name)
def test_every_ring_record_is_fixed_size_and_starts_with_the_header(family: Family) -> None:
    for ring, dtype in family.rings.items():
        assert dtype.names is not None and dtype.names[0] == "hdr", ring
        assert dtype["hdr"] == EVENT_HEADER, ring
        assert dtype.itemsize % 8 == 0, ring
        assert dtype in family.structs.values(), f"{ring}: record type not layout-checked"


def test_a_drifted_mirror_is_detected() -> None:
    # GIVEN the real sched_event layout and a mirror with two fields swapped
    family = FAMILIES["sched"]
    real = family.structs["sched_event"]
    assert real.names is not None
    names = list(real.names)
    i, j = names.index("prev_pid"), names.index("prev_tid")
    names[i], names[j] = names[j], names[i]
    swapped = np.dtype([(n, real.fields[n][0]) for n in names])  # type: ignore[index]
    shorter = np.dtype([(n, real.fields[n][0]) for n in real.names if n != "__pad"])  # type: ignore[index]
    with _btf(family) as btf:
        c_fields, c_size = _c_struct(btf, "sched_event")
    # WHEN compared THEN each drift is reported
    assert layout_differences(c_fields, c_size, swapped)
    assert any(d.startswith("size") for d in layout_differences(c_fields, c_size, shorter))
