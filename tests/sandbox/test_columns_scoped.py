"""Each user's worker receives only the columns that user's filters can read: one user's
filters never see (nor widen) what another user's read."""

from __future__ import annotations

import pyarrow as pa

from sandbox import compile_filter
from sandbox.pool import WorkerPool
from sandbox.pool.shm import leaf_paths, project

READS_DIAOBJECT = '"""Far north."""\ndef filter(alerts):\n    return alerts.diaObject.dec > -90\n'
LOOKS_AROUND = (
    '"""What can I see?"""\n'
    "def filter_alert(alert):\n"
    "    return sorted(alert.keys()) == ['diaSource'] and sorted(alert['diaSource'].keys()) == ['band', 'midpointMjdTai']\n"
)


def test_a_worker_sees_only_its_users_columns(visit: pa.RecordBatch) -> None:
    """A filter that lists what its alerts hold sees its own user's columns only, although
    another user's filter reads diaObject in the same visit."""
    filters = [
        ("a/north", compile_filter(READS_DIAOBJECT, "north.py")),
        ("b/look", compile_filter(LOOKS_AROUND, "look.py")),
    ]
    with WorkerPool(filters) as pool:
        north, look = pool.run(visit)
        columns = pool._columns_of(visit, {"a": [0], "b": [1]})
    assert north.fault is None and north.passed > 0
    assert look.fault is None and look.passed == visit.num_rows, look.fault
    assert columns["b"] == {"diaSource.band", "diaSource.midpointMjdTai"}
    assert "diaObject.dec" in columns["a"] and not any(p.startswith("cutout") for p in columns["a"])


def test_projection_keeps_structure_and_nulls(visit: pa.RecordBatch) -> None:
    """A projected batch holds exactly the asked leaves, with the same values and nulls."""
    want = frozenset({"diaSource.snr", "prvDiaSources.psfFlux", "diaObject.ra", "cutoutScience"})
    small = project(visit, want)
    assert leaf_paths(small.schema) == want
    assert small.column("diaObject").null_count == visit.column("diaObject").null_count
    assert small.column("prvDiaSources").to_pylist() == [
        None if x is None else [{"psfFlux": p["psfFlux"]} for p in x]
        for x in visit.column("prvDiaSources").to_pylist()
    ]
    assert small.nbytes < visit.nbytes / 2
