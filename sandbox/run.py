"""Run compiled filters over a visit and return one validated boolean mask per filter.

:class:`InProcessRunner` executes filters in the calling process, each with a fresh namespace.
It is what ``minibroker test`` and the unit tests use; in-process restriction is not a security
boundary, so the service runs filters in the worker pool instead (same :class:`Outcome`s).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from sandbox.compile import CompiledFilter
from sandbox.errors import FaultReason, FilterFault
from sandbox.keys import FilterKey, display_name
from sandbox.namespace import make_globals
from sandbox.shares import Shares
from sandbox.store import ColumnStore
from sandbox.view.columns import AlertsView, Column
from sandbox.view.record import AlertRecord

__all__ = ["InProcessRunner", "Outcome", "run_filter", "validate_result"]


@dataclass(frozen=True)
class Outcome:
    """What one filter did on one visit: a mask, or a fault for its owner."""

    key: str
    mask: np.ndarray | None
    seconds: float
    fault: FilterFault | None = None

    @property
    def passed(self) -> int:
        """How many alerts passed (0 on a fault)."""
        return 0 if self.mask is None else int(self.mask.sum())


def validate_result(result: object, n: int, filename: str) -> np.ndarray:
    """Turn what ``filter`` returned into a bool array of length ``n``, or raise FilterFault.

    Accepted: a boolean column of length ``n`` (nulls count as False) or a single ``True``/``False``.
    """
    if type(result) is bool:
        return np.full(n, result)
    if type(result) is Column:
        if result._v.dtype != np.bool_:
            raise FilterFault(
                f"{filename}: filter returned a column of {result.dtype}, expected booleans; "
                "compare it, e.g. `alerts.diaSource.snr > 10`",
                reason=FaultReason.BAD_RESULT,
            )
        if len(result) != n:
            raise FilterFault(
                f"{filename}: filter returned {len(result)} values for {n} alerts; return one boolean per alert",
                reason=FaultReason.BAD_RESULT,
            )
        return np.array(result._flags(), dtype=bool)
    raise FilterFault(
        f"{filename}: filter returned a {type(result).__name__}, expected a boolean column with one "
        f"value per alert ({n}), e.g. `return alerts.diaSource.snr > 10`",
        reason=FaultReason.BAD_RESULT,
    )


def _where(exc: BaseException, filename: str, label: str) -> str:
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == filename:
            line = lineno
    return f"{label}:{line}" if line else label


def describe(exc: BaseException) -> str:
    """``"ValueError: the message"`` for a filter's exception; never raises (its text may
    recurse without end, or not be text at all). The caller's FilterFault escapes it."""
    try:
        text = str(exc)
    except BaseException:  # noqa: B036 - a message that cannot be built is still a fault
        text = ""
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def run_filter(compiled: CompiledFilter, store: ColumnStore, name: str | None = None) -> np.ndarray:
    """Execute one filter over one visit in this process; raise FilterFault on any failure.

    The file defines ``filter(alerts)`` (vectorized) or ``filter_alert(alert)`` (called once
    per alert), and optionally ``refine(alert)``, called only for the alerts that passed, with
    the per-alert view (cutouts included); ``refine`` returning False drops the alert.
    Messages name the filter ``name`` (its owner and name), or else its file.
    """
    label = name or compiled.filename
    ns = make_globals()
    try:
        exec(compiled.code, ns)  # noqa: S102 - restricted code, restricted namespace
        vector, scalar, refine = ns.get("filter"), ns.get("filter_alert"), ns.get("refine")
        if callable(vector):
            mask = validate_result(vector(AlertsView(store)), len(store), label)
        elif callable(scalar):
            mask = _each(
                scalar, "filter_alert", store, np.arange(len(store)), compiled.filename, label
            )
        else:
            raise FilterFault(
                f"{label}: defines neither `filter(alerts)` nor `filter_alert(alert)`"
            )
        if callable(refine):
            survivors = np.flatnonzero(mask)
            mask[survivors] = _each(refine, "refine", store, survivors, compiled.filename, label)
    except FilterFault:
        raise
    except RecursionError:
        raise FilterFault(f"{label}: recursion too deep", reason=FaultReason.ERROR) from None
    except MemoryError:
        raise FilterFault(f"{label}: ran out of memory", reason=FaultReason.MEMORY) from None
    except Exception as exc:
        raise FilterFault(
            f"{_where(exc, compiled.filename, label)}: {describe(exc)}", reason=FaultReason.ERROR
        ) from None
    return mask


def _each(
    fn: object, name: str, store: ColumnStore, rows: np.ndarray, filename: str, label: str
) -> np.ndarray:
    """Call a per-alert function on each row; it must return exactly True or False."""
    out = np.zeros(len(rows), bool)
    for k, row in enumerate(rows.tolist()):
        try:
            result = fn(AlertRecord(store, "", row))  # type: ignore[operator]
        except (FilterFault, RecursionError, MemoryError):
            raise
        except Exception as exc:
            raise FilterFault(
                f"{_where(exc, filename, label)}: {describe(exc)} (in {name}, alert row {row})",
                reason=FaultReason.ERROR,
            ) from None
        if type(result) is not bool:
            raise FilterFault(
                f"{label}: {name} returned {type(result).__name__} for alert row "
                f"{row}; return True or False",
                reason=FaultReason.BAD_RESULT,
            )
        out[k] = result
    return out


class InProcessRunner:
    """Runs filters one after another in this process (no isolation; see module doc).

    ``shares`` limits each user's active filters and evaluation time per visit, as the pool
    does (:mod:`sandbox.shares`)."""

    def __init__(self, filters: Sequence[tuple[str, CompiledFilter]], shares: Shares | None = None):
        self.filters = list(filters)
        self.shares = shares or Shares()

    def run(self, batch: pa.RecordBatch) -> list[Outcome]:
        """Every filter over one visit batch; a failing filter yields a fault, never an exception."""
        store = ColumnStore(batch)
        outcomes: list[Outcome] = []
        _admitted, over = self.shares.admit([key for key, _ in self.filters])
        used: dict[str, float] = {}
        budget = self.shares.budget_s
        for i, (key, compiled) in enumerate(self.filters):
            label = display_name(key, compiled.filename)
            owner = FilterKey.parse(key).owner
            if i in over:
                outcomes.append(Outcome(key, None, 0.0, self.shares.too_many(label, owner)))
                continue
            if budget is not None and used.get(owner, 0.0) >= budget:
                outcomes.append(Outcome(key, None, 0.0, self.shares.out_of_time(label, owner)))
                continue
            start = time.perf_counter()
            try:
                mask = run_filter(compiled, store, label)
                outcomes.append(Outcome(key, mask, time.perf_counter() - start))
            except FilterFault as fault:
                outcomes.append(Outcome(key, None, time.perf_counter() - start, fault))
            except BaseException as exc:  # noqa: B036 - one filter never ends the visit for all
                if isinstance(exc, KeyboardInterrupt):
                    raise
                failed = FilterFault(
                    f"{label}: failed ({type(exc).__name__})", reason=FaultReason.ERROR
                )
                outcomes.append(Outcome(key, None, time.perf_counter() - start, failed))
            used[owner] = used.get(owner, 0.0) + outcomes[-1].seconds
        return outcomes

    def close(self) -> None:
        """Nothing to release in-process; present so runners are interchangeable."""
