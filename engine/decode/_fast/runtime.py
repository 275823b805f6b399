"""Load a generated decoder, run it, and wrap its buffers as Arrow arrays without copying.

Each decode fills one *context*: the C ``Ctx`` struct (buffer pointers, capacities, level
lengths, error details) held in a ctypes ``int64`` array. The batch it produces owns the
context through a small holder object that every Arrow buffer references; when the batch is
garbage collected the context goes back to a pool, so the next visit writes into memory that is
already mapped (a fresh page costs ~2 µs here, about what it takes to decode 30 values).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from engine.alerts import wire
from engine.errors import DecodeError

from .emit import Col, Layout
from .prelude import ERRORS, PYBUFFER_SIZE

__all__ = ["Decoder"]

_POOL_SIZE = 2  # contexts kept per decoder: the batch being used and the one being decoded
_FIXED_WIDTH = {"int64": 8, "int32": 4, "float": 4, "double": 8}


class _Holder:
    """Owner of one context's buffers while any Arrow buffer built on them is alive."""

    __slots__ = ("decoder", "ctx", "__weakref__")

    def __init__(self, decoder: Decoder, ctx: Any) -> None:
        self.decoder, self.ctx = decoder, ctx

    def __del__(self) -> None:
        try:
            self.decoder._give(self.ctx)
        except Exception:  # interpreter shutdown: modules may already be gone
            pass


class _Scratch(threading.local):
    """Per-thread arrays for pinning Kafka bodies (reused: they are as long as a visit)."""

    def __init__(self) -> None:
        self.n = 0
        self.views: Any = None
        self.ptrs: Any = None
        self.lens: Any = None

    def ensure(self, n: int) -> None:
        if n > self.n:
            self.n = max(n, 2 * self.n, 1024)
            self.views = (ctypes.c_char * (PYBUFFER_SIZE * self.n))()
            self.ptrs = (ctypes.c_void_p * self.n)()
            self.lens = (ctypes.c_int64 * self.n)()


_scratch = _Scratch()


class Decoder:
    """One compiled decoder: a fixed alert schema version and projection.

    Parameters
    ----------
    library : str
        Path of the shared object built from the source ``emit`` returned with ``layout``.
    layout : Layout
        The buffer/column description that matches the library.
    """

    def __init__(self, library: str, layout: Layout) -> None:
        self.layout = layout
        self._lib = ctypes.CDLL(library)  # releases the GIL around calls
        self._pylib = ctypes.PyDLL(library)  # same handle; keeps the GIL (Python API calls)
        vp, i64 = ctypes.c_void_p, ctypes.c_int64
        for name, args in (
            ("fd_begin", [vp, i64]),
            ("fd_decode_block", [vp, vp, i64, i64, vp]),
            ("fd_decode_ptrs", [vp, vp, vp, i64]),
        ):
            fn = getattr(self._lib, name)
            fn.argtypes, fn.restype = args, ctypes.c_int
        self._lib.fd_free.argtypes, self._lib.fd_free.restype = [vp], None
        self._lib.fd_unframe.argtypes = [vp, vp, i64, i64, vp, vp]
        self._lib.fd_unframe.restype = i64
        self._acquire = self._pylib.fd_acquire
        self._acquire.argtypes, self._acquire.restype = [ctypes.py_object, i64, vp, vp, vp], i64
        self._release = self._pylib.fd_release
        self._release.argtypes, self._release.restype = [vp, i64], None
        nb, nl = max(1, len(layout.bufs)), max(1, layout.nlevels)
        self._nb, self._nl = nb, nl
        self._words = layout.ctx_words
        self._err = 3 * nb + 2 * nl  # err_code, err_index, err_start, err_pos, err_field
        self._pool: list[Any] = []
        self._lock = threading.Lock()

    # -- contexts --------------------------------------------------------------------------
    def _take(self, count: int) -> Any:
        with self._lock:
            ctx = self._pool.pop() if self._pool else (ctypes.c_int64 * self._words)()
        if self._lib.fd_begin(ctx, count) != 0:
            self._give(ctx)
            raise DecodeError(f"out of memory preparing buffers for {count} alerts")
        return ctx

    def _give(self, ctx: Any) -> None:
        with self._lock:
            if len(self._pool) < _POOL_SIZE:
                self._pool.append(ctx)
                return
        self._lib.fd_free(ctx)

    # -- decoding --------------------------------------------------------------------------
    def decode_block(
        self, data: memoryview, count: int, where: str
    ) -> tuple[pa.RecordBatch, list[memoryview]]:
        """Decode ``count`` datums lying back to back in ``data``."""
        view = memoryview(data)
        scratch = _scratch
        scratch.ensure(1)
        self._acquire([view], 1, scratch.views, scratch.ptrs, scratch.lens)
        try:
            starts = np.empty(count + 1, dtype=np.int64)
            ctx = self._take(count)
            rc = self._lib.fd_decode_block(
                ctx, scratch.ptrs[0], view.nbytes, count, starts.ctypes.data
            )
        finally:
            self._release(scratch.views, 1)
        if rc != 0:
            self._fail(ctx, where, block=True)
        batch = self._assemble(ctx)
        bounds = starts.tolist()
        raw = [view[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
        return batch, raw

    def _pointers(self, items: Sequence[bytes | memoryview], where: str) -> tuple[int, _Scratch]:
        """Pin every item's buffer and put its address and length in the shared scratch arrays
        (released by the caller with ``_release``); DecodeError names a non-buffer item."""
        items = items if isinstance(items, (list, tuple)) else list(items)
        n = len(items)
        scratch = _scratch
        scratch.ensure(n)
        try:
            self._acquire(items, n, scratch.views, scratch.ptrs, scratch.lens)
        except (TypeError, BufferError, ValueError) as exc:
            raise DecodeError(
                f"{where}: an item is not a contiguous bytes-like object: {exc}"
            ) from exc
        return n, scratch

    def decode_datums(self, datums: Sequence[bytes | memoryview], where: str) -> pa.RecordBatch:
        """Decode one datum per element of ``datums``, each where it lies."""
        n, scratch = self._pointers(datums, where)
        return self._decode_pinned(n, scratch, where)

    def decode_framed(
        self, bodies: Sequence[bytes | memoryview], schema_id: int, where: str
    ) -> pa.RecordBatch:
        """Decode Confluent-framed bodies (header checked and skipped in C), each where it lies.

        Every body must carry ``schema_id``; otherwise DecodeError names the first that does not.
        """
        n, scratch = self._pointers(bodies, where)
        why, found = ctypes.c_int64(0), ctypes.c_int64(0)
        bad = self._lib.fd_unframe(
            scratch.ptrs, scratch.lens, n, schema_id, ctypes.byref(why), ctypes.byref(found)
        )
        if bad >= 0:
            self._release(scratch.views, n)
            at = f"{where} {bad}"
            if why.value == 1:
                raise wire.too_short(at, scratch.lens[bad])
            if why.value == 2:
                raise wire.not_framed(at, found.value)
            raise DecodeError(f"{at}: schema id {found.value} differs from the batch's {schema_id}")
        return self._decode_pinned(n, scratch, where)

    def _decode_pinned(self, n: int, scratch: _Scratch, where: str) -> pa.RecordBatch:
        """Decode the ``n`` items ``_pointers`` pinned (datums, or bodies whose header the C
        side skips), release them, and assemble the batch."""
        try:
            ctx = self._take(n)
            rc = self._lib.fd_decode_ptrs(ctx, scratch.ptrs, scratch.lens, n)
        finally:
            self._release(scratch.views, n)
        if rc != 0:
            self._fail(ctx, where, block=False)
        return self._assemble(ctx)

    def _fail(self, ctx: Any, where: str, *, block: bool) -> None:
        code, index, start, pos, fid = ctx[self._err : self._err + 5]
        self._give(ctx)
        reason = ERRORS.get(code, f"error {code}")
        name = self.layout.fields[fid] if 0 <= fid < len(self.layout.fields) else "?"
        if block:
            raise DecodeError(
                f"{where}: alert {index} (starting at byte {start} of the block) is corrupt: "
                f"{reason}, reading {name} at byte {pos} of the block"
            )
        raise DecodeError(
            f"{where} {index}: corrupt Avro datum: {reason}, reading {name} at byte {pos} of the datum"
        )

    # -- Arrow assembly --------------------------------------------------------------------
    def _assemble(self, ctx: Any) -> pa.RecordBatch:
        words = ctx[:]
        nb, nl = self._nb, self._nl
        holder = _Holder(self, ctx)
        # A plain object, not nested closures: a closure that calls itself is a reference
        # cycle, which kept the holder (and so the context) alive until the cycle collector
        # ran, and every small batch then paid for fresh buffers (fresh pages) instead of
        # reusing the pooled ones.
        build = _Builder(
            words[:nb], words[2 * nb : 3 * nb], words[3 * nb + nl : 3 * nb + 2 * nl], holder
        )
        arrays = [build.array(col) for col in self.layout.columns]
        return pa.RecordBatch.from_arrays(arrays, schema=self.layout.schema)


class _Builder:
    """Arrow arrays over one context's buffers; every buffer keeps ``holder`` alive."""

    __slots__ = ("ptrs", "vlen", "llen", "holder")

    def __init__(self, ptrs: list[int], vlen: list[int], llen: list[int], holder: _Holder) -> None:
        self.ptrs, self.vlen, self.llen, self.holder = ptrs, vlen, llen, holder

    def wrap(self, b: int, size: int) -> pa.Buffer:
        return pa.foreign_buffer(self.ptrs[b], size, base=self.holder)

    def array(self, col: Col) -> pa.Array:
        n = self.llen[col.level]
        t = col.type
        wrap = self.wrap
        validity = None if col.validity is None else wrap(col.validity, (n + 7) // 8)
        assert col.values is not None or pa.types.is_struct(t)
        if col.child_level is not None:
            offsets = wrap(col.values, 4 * (n + 1))  # type: ignore[arg-type]
            return pa.Array.from_buffers(
                t, n, [validity, offsets], children=[self.array(col.children[0])]
            )
        if pa.types.is_struct(t):
            return pa.Array.from_buffers(
                t, n, [validity], children=[self.array(c) for c in col.children]
            )
        if col.data is not None:
            width = 8 if pa.types.is_large_binary(t) else 4
            return pa.Array.from_buffers(
                t,
                n,
                [
                    validity,
                    wrap(col.values, width * (n + 1)),  # type: ignore[arg-type]
                    wrap(col.data, self.vlen[col.data]),
                ],
            )
        if pa.types.is_boolean(t):
            return pa.Array.from_buffers(t, n, [validity, wrap(col.values, (n + 7) // 8)])  # type: ignore[arg-type]
        width = t.bit_width // 8
        return pa.Array.from_buffers(t, n, [validity, wrap(col.values, width * n)])  # type: ignore[arg-type]
