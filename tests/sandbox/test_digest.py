"""Derived lightcurve results computed once on the trusted side and handed to every worker
(:mod:`sandbox.digest`): the same answers as computing them in the worker, only what the user
may read, and nothing a worker reports is trusted."""

from __future__ import annotations

import json
import mmap
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from sandbox import InProcessRunner, compile_filter
from sandbox.digest import MAX_RECIPES, Digest
from sandbox.pool import WorkerPool
from sandbox.pool.shm import leaf_paths
from sandbox.store import ColumnStore

ROOT = Path(__file__).resolve().parents[2]
PRV = "prvDiaSources"
LIGHTCURVE = (
    '"""Brightening in its own band."""\n'
    "def filter(alerts):\n"
    "    ds = alerts.diaSource\n"
    "    lc = alerts.prvDiaSources.psfFlux\n"
    "    return (lc.in_band(ds.band).last() < ds.psfFlux) & (alerts.history('psfFlux').std() > 0)"
    " & (lc.in_band('r').count() >= 0) & (lc.times().max() > 0)\n"
)


def _night_batches(night: Path, filters: list[tuple[str, Any]]) -> list[pa.RecordBatch]:
    from engine.alerts.schema import load_schema
    from engine.decode import decode_block
    from engine.evaluate import columns_needed
    from engine.registry import ActiveFilter
    from engine.sources.night import read_night
    from sandbox import FilterKey

    schema = load_schema("11.1")
    active = [ActiveFilter(FilterKey.parse(k).owner, c) for k, c in filters]
    columns = columns_needed(active, schema)
    return [decode_block(block, schema, columns).batch for block in read_night(night)]


def _all_filters() -> list[tuple[str, Any]]:
    from engine.local.bench import typical_filters

    samples = [
        (f"sample{i}/{p.stem}", compile_filter(p.read_text(), p.name))
        for i, p in enumerate(sorted((ROOT / "sample_filters").glob("*.py")))
    ]
    return [
        *samples,
        *typical_filters(10, 10),
        ("lc/own_band", compile_filter(LIGHTCURVE, "lc.py")),
    ]


def test_handed_over_results_give_the_in_process_answers_on_every_visit(
    small_night: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every sample filter, the typical filters and one using every kind of recipe: the masks
    equal in-process evaluation on every visit, and from the second visit on the workers are
    handed lightcurve results instead of computing them."""
    filters = _all_filters()
    batches = _night_batches(small_night, filters)
    handed: list[int] = []
    real = Digest.entries

    def counting(self: Digest, user: str) -> tuple[list[int], list[list[Any]]]:
        fds, entries = real(self, user)
        handed.append(len(entries))
        return fds, entries

    monkeypatch.setattr(Digest, "entries", counting)
    with WorkerPool(filters, budget_s=5.0, max_idle_workers=len(filters)) as pool:
        for visit_no, batch in enumerate(batches):
            want = InProcessRunner(filters).run(batch)
            handed.clear()
            got = pool.run(batch)
            for g, w in zip(got, want, strict=True):
                assert g.fault is None, g.fault
                np.testing.assert_array_equal(g.mask, w.mask, err_msg=f"{g.key} visit {visit_no}")
            if visit_no:
                assert sum(handed) > 20
        recipes = pool._digest.recipes("lc")
    kinds = {json.dumps(r) for r in recipes}
    for expected in (
        [f"{PRV}.psfFlux", "in_band", "diaSource.band"],
        [f"{PRV}.psfFlux", "in_band", "r"],
        ["history", "psfFlux", "std"],
        [f"{PRV}.psfFlux", "times"],
    ):
        assert any(all(json.dumps(part)[1:-1] in k for part in expected) for k in kinds), expected


def _digest_over(batch: pa.RecordBatch) -> tuple[Digest, frozenset[str]]:
    return Digest(), leaf_paths(batch.schema)


def _report(*recipes: Any) -> bytes:
    return json.dumps(list(recipes)).encode()


def test_a_report_is_kept_only_for_columns_the_user_may_read(visit: pa.RecordBatch) -> None:
    """A recipe is kept only when every column computing it (the lightcurve's times and bands
    included) is one the user's filters may read anyway."""
    digest, available = _digest_over(visit)
    flux = ["col", f"{PRV}.psfFlux"]
    readable = frozenset({f"{PRV}.psfFlux", "diaSource.psfFlux"})
    digest.learn(
        "u",
        _report(
            flux,
            ["col", "diaSource.ra"],  # not read by the user's filters
            [flux, "max"],
            [flux, "last"],  # needs prvDiaSources.midpointMjdTai
            [flux, "in_band", "r"],  # needs prvDiaSources.band
            [flux, "in_band", ["col", "diaSource.band"]],
            ["history", "psfFlux"],
            [["history", "psfFlux"], "mean"],
        ),
        readable,
        available,
    )
    assert digest.recipes("u") == [
        flux,
        [flux, "max"],
        ["history", "psfFlux"],
        [["history", "psfFlux"], "mean"],
    ]
    # A history reads previous sources: not kept for a user who may not read them.
    digest.learn("v", _report(["history", "psfFlux"]), frozenset({"diaSource.psfFlux"}), available)
    assert digest.recipes("v") == []
    # With times and bands readable, the time-ordered and band results are kept too.
    more = readable | {f"{PRV}.midpointMjdTai", f"{PRV}.band", "diaSource.band"}
    digest.learn(
        "w", _report([flux, "last"], [flux, "in_band", ["col", "diaSource.band"]]), more, available
    )
    assert len(digest.recipes("w")) == 2
    digest.forget("w")
    assert digest.recipes("w") == []


@pytest.mark.parametrize(
    "report",
    [
        b"not json",
        b'{"a": 1}',
        _report(["col", f"{PRV}.psfFlux", "extra", "parts"]),
        _report([["col", f"{PRV}.psfFlux"], "__class__"]),
        _report([["col", f"{PRV}.psfFlux"], "_valid"]),
        _report([["col", f"{PRV}.psfFlux"], "in_band", "x"]),
        _report([["col", f"{PRV}.psfFlux"], "in_band", ["history", "band"]]),
        _report(
            [
                [[[[[["col", f"{PRV}.psfFlux"], "times"], "times"], "times"], "times"], "times"],
                "max",
            ]
        ),
        _report(["col", 7]),
        b"[" + b'["col", "' + b"x" * 20000 + b'"]]',
    ],
)
def test_a_malformed_report_is_ignored(visit: pa.RecordBatch, report: bytes) -> None:
    digest, available = _digest_over(visit)
    digest.learn("u", report, available, available)
    assert digest.recipes("u") == []


def test_recipes_per_user_are_capped(visit: pa.RecordBatch) -> None:
    digest, available = _digest_over(visit)
    many = [[["col", f"{PRV}.psfFlux"], "in_band", b] for b in "ugrizy"] * 20
    many += [["col", p] for p in sorted(available)]
    digest.learn("u", _report(*many[:200]), available, available)
    assert 0 < len(digest.recipes("u")) <= MAX_RECIPES


def test_a_recipe_that_cannot_be_computed_is_dropped(visit: pa.RecordBatch) -> None:
    """Not an error for anyone: it is simply not handed over again."""
    digest, available = _digest_over(visit)
    broken = [["col", "diaSource.ra"], "max"]  # not a lightcurve
    odd = ["history", "noSuchField"]
    readable = available | {"diaSource.noSuchField", f"{PRV}.noSuchField"}
    digest.learn("u", _report(broken, odd), readable, available)
    assert digest.recipes("u") == [broken, odd]
    digest.start(visit)
    try:
        fds, entries = digest.entries("u")
    finally:
        digest.finish()
    assert (fds, entries) == ([], [])
    assert digest.recipes("u") == []


def test_results_installed_in_a_store_equal_computing_them(visit: pa.RecordBatch) -> None:
    """What a worker's store installs is what its own methods would compute; an entry that
    does not fit is skipped."""
    from sandbox.run import run_filter
    from sandbox.worker import _install

    compiled = compile_filter(LIGHTCURVE, "lc.py")
    own = ColumnStore(visit)
    want = run_filter(compiled, own)
    digest, available = _digest_over(visit)
    digest.learn("u", json.dumps(own.learned).encode(), available, available)
    digest.start(visit)
    try:
        fds, entries = digest.entries("u")
        assert len(entries) >= 5
        maps = [mmap.mmap(fd, 0, access=mmap.ACCESS_READ) for fd in fds]
        seeded = ColumnStore(visit)
        _install(seeded, [*entries, [["col", f"{PRV}.psfFlux"], 99, []]], maps)
        np.testing.assert_array_equal(run_filter(compiled, seeded), want)
        assert seeded.learned == []  # everything it derived was handed over
        # The segment index arrays came with the lightcurves, equal to computing them.
        for prefix, (seg, _lm) in seeded._shapes.items():
            fresh = own._shapes[prefix][0]
            for name in ("off", "lengths", "nonempty", "starts"):
                np.testing.assert_array_equal(getattr(seg, name), getattr(fresh, name))
            assert (seg.dense, seg.total) == (fresh.dense, fresh.total)
        assert seeded._shapes
        del seeded
    finally:
        digest.finish()


def test_users_deriving_the_same_results_share_one_encoding_per_visit(
    visit: pa.RecordBatch,
) -> None:
    """The job text the pool sends is the entries, at most ``limit`` of them, with their
    descriptors; two users with the same recipes get equal answers, computed once."""
    from sandbox.run import run_filter

    compiled = compile_filter(LIGHTCURVE, "lc.py")
    own = ColumnStore(visit)
    run_filter(compiled, own)
    digest, available = _digest_over(visit)
    for user in ("u", "v"):
        digest.learn(user, json.dumps(own.learned).encode(), available, available)
    digest.start(visit)
    try:
        fds, entries = digest.entries("u")
        assert digest.encoded("u", 99) == (fds, json.dumps(entries))
        assert digest.encoded("v", 99) == (fds, json.dumps(entries))
        assert len(digest._encoded) == 1
        few_fds, few = digest.encoded("u", 2)
        assert few == json.dumps(entries[:2]) and few_fds == fds[:2]
    finally:
        digest.finish()
    assert digest._encoded == {}  # descriptors and layouts are one visit's


def test_the_engine_spends_at_most_its_budget_on_reported_recipes(visit: pa.RecordBatch) -> None:
    """However many recipes workers report, the engine computes results for at most its time
    budget per visit, the most used first; the rest are kept for later visits (the workers
    compute them meanwhile, on their users' own time)."""
    digest, available = _digest_over(visit)
    flux = ["col", f"{PRV}.psfFlux"]
    everyone = _report(flux, [flux, "max"])
    for user in ("a", "b", "c"):
        digest.learn(user, everyone, available, available)
    digest.learn(
        "greedy",
        _report(*[[flux, op] for op in ("median", "n_distinct", "std")]),
        available,
        available,
    )
    digest.budget_s = 0.0
    digest.start(visit)
    try:
        handed = [e[0] for e in digest.entries("greedy")[1]]
        assert handed in ([], [flux])  # at most the most used result, computed first
    finally:
        digest.finish()
    assert len(digest.recipes("greedy")) == 3
    digest.budget_s = 10.0
    digest.start(visit)
    try:
        assert len(digest.entries("greedy")[1]) == 4
    finally:
        digest.finish()
