"""Generate a C decoder from an Avro alert schema and the Arrow columns wanted from it.

The emitted code walks each datum once, in order, and writes every wanted value straight into
Arrow-layout buffers; everything else is walked past (``skip_*`` functions). Arrow arrays are
grouped in *levels*: level 0 has one slot per alert, and every wanted list column opens a level
of its own with one slot per list item. All buffers of a level are indexed by the level's slot
counter (a local ``sN``) and grow together, so writing a value is one store, with no per-column
length bookkeeping:

=========================  ======================================================
Arrow type                 buffers (``Buf``)                 written at slot s
=========================  ======================================================
int/long/float/double/ts   values (fixed width)              ``vK[s] = value``
bool                       value bitmap                      ``VSET(vK, s)``
string / large_binary      offsets (level) + data (growable)  ``oK[s + 1] = used``
list                       offsets (level), items at level M ``oK[s + 1] = sM``
struct                     (children only)
nullable anything          + validity bitmap                 ``VSET(nK, s)``
=========================  ======================================================

Where a nullable struct is null, its descendants get Arrow's "empty value" (0, "", [], a valid
empty struct), exactly what ``pyarrow`` builds from a ``None`` struct in the reference decoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from engine.alerts.schema import AvroType, parse_avro
from engine.errors import SchemaError

from .prelude import PRELUDE, RUNTIME

__all__ = ["Buf", "Col", "Layout", "emit"]

_FIXED = {
    "long": ("int64_t", 8),
    "int": ("int32_t", 4),
    "float": ("float", 4),
    "double": ("double", 8),
    "timestamp": ("int64_t", 8),
}


# ---------------------------------------------------------------------------------------------
# The Arrow side: buffers, levels and the column tree the runtime assembles arrays from.


@dataclass
class Buf:
    """One output buffer. ``level`` is -1 for growable string/binary data buffers."""

    kind: int  # 0 fixed, 1 bitmap, 2 offsets, 3 data (values of RUNTIME's K_* enum)
    level: int
    width: int  # bytes per slot (fixed, offsets); 0 otherwise
    ctype: str  # C element type of the buffer


@dataclass
class Col:
    """One Arrow array to build: its type, level, buffer indices and children."""

    type: pa.DataType
    level: int
    validity: int | None = None
    values: int | None = None  # fixed values, bool bits, or offsets
    data: int | None = None  # string/binary bytes
    child_level: int | None = None
    children: list[Col] = field(default_factory=list)


@dataclass
class Layout:
    """What the runtime needs to wrap a generated decoder's output as Arrow."""

    schema: pa.Schema
    bufs: list[Buf]
    nlevels: int
    columns: list[Col]
    fields: list[str]  # error-message names, indexed by the ids baked into the C code

    @property
    def ctx_words(self) -> int:
        """Size of the C ``Ctx`` struct in 8-byte words (see :func:`emit`)."""
        return 3 * self._nb + 2 * self._nl + 6

    @property
    def _nb(self) -> int:
        return max(1, len(self.bufs))

    @property
    def _nl(self) -> int:
        return max(1, self.nlevels)


# ---------------------------------------------------------------------------------------------
# The emitter. Every wanted record becomes a C function ``rec_N(c, p, end, s)`` that decodes one
# value at slot ``s`` of its level and returns the new read position (NULL on error, with the
# details in ``c``). Small functions keep gcc's register allocator fast (one 4,000-line
# function took 25 s to compile; split, the same code takes about a second).


class _Func:
    """The C function being emitted: its lines and the buffer pointers it caches as locals."""

    def __init__(self, level: int | None) -> None:
        self.level = level
        self.lines: list[str] = []
        self.indent = 1
        self.locals: dict[str, str] = {}


class _Emitter:
    def __init__(self) -> None:
        self.bufs: list[Buf] = []
        self.nlevels = 1
        self.fields: list[str] = ["datum"]
        self.field_ids: dict[str, int] = {"datum": 0}
        self.funcs: list[str] = []  # finished function definitions
        self.protos: list[str] = []
        self.skips: dict[int, str] = {}  # id(AvroType) -> skip function name
        self.empties: dict[int, str] = {}  # id(Col) -> empty-fill function name
        self.cur = _Func(None)
        self.tmp = 0

    # -- small helpers -------------------------------------------------------------------
    def out(self, line: str) -> None:
        self.cur.lines.append("    " * self.cur.indent + line)

    def block(self, head: str) -> _Block:
        return _Block(self, head)

    def fid(self, path: str) -> int:
        if path not in self.field_ids:
            self.field_ids[path] = len(self.fields)
            self.fields.append(path)
        return self.field_ids[path]

    def fresh(self, stem: str) -> str:
        self.tmp += 1
        return f"{stem}{self.tmp}"

    def new_buf(self, kind: int, level: int, width: int, ctype: str) -> int:
        self.bufs.append(Buf(kind, level, width, ctype))
        return len(self.bufs) - 1

    def ref(self, b: int) -> str:
        """C expression for buffer ``b``'s typed pointer.

        Buffers of the function's own level cannot move while it runs (only arrays grow a
        level, and every array has a level of its own), so they are cached in locals.
        """
        buf = self.bufs[b]
        if buf.level == self.cur.level:
            name = f"b{b}"
            self.cur.locals[name] = f"{buf.ctype} *{name} = ({buf.ctype} *)c->buf[{b}];"
            return name
        return f"(({buf.ctype} *)c->buf[{b}])"

    def function(self, head: str, level: int | None, fill: Any, ret: str = "return p;") -> None:
        """Emit a complete function: ``fill()`` writes the body into ``self.cur``."""
        saved = self.cur
        self.cur = _Func(level)
        fill()
        self.out(ret)
        body = list(self.cur.locals.values())
        self.funcs.append(
            head
            + " {\n"
            + "".join(f"    {d}\n" for d in body)
            + "\n".join(self.cur.lines)
            + "\n}\n"
        )
        self.protos.append(head + ";")
        self.cur = saved

    # -- column allocation: mirrors the Arrow type ---------------------------------------
    def column(self, typ: pa.DataType, avro: AvroType, nullable: bool, level: int) -> Col:
        col = Col(typ, level)
        if nullable:
            col.validity = self.new_buf(1, level, 0, "uint8_t")
        kind = avro.kind
        if kind in _FIXED:
            ctype, width = _FIXED[kind]
            col.values = self.new_buf(0, level, width, ctype)
        elif kind == "boolean":
            col.values = self.new_buf(1, level, 0, "uint8_t")
        elif kind in ("string", "bytes"):
            width = 4 if kind == "string" else 8  # utf8: int32 offsets; large_binary: int64
            col.values = self.new_buf(2, level, width, f"int{8 * width}_t")
            col.data = self.new_buf(3, -1, 0, "uint8_t")
        elif kind == "array":
            col.values = self.new_buf(2, level, 4, "int32_t")
            col.child_level = self.nlevels
            self.nlevels += 1
            assert avro.items is not None
            col.children = [
                self.column(
                    typ.value_type, avro.items, avro.items_null is not None, col.child_level
                )
            ]
        elif kind == "record":
            by_name = {name: (t, n) for name, t, n in avro.fields}
            for child in typ:
                t, n = by_name[child.name]
                col.children.append(self.column(child.type, t, n is not None, level))
        return col

    # -- decoding wanted values ----------------------------------------------------------
    def decode(self, col: Col, avro: AvroType, null: int | None, slot: str, path: str) -> None:
        """Emit code reading one value of ``avro`` (nullable when ``null`` is its union index)."""
        fid = self.fid(path)
        if null is None:
            self.decode_value(col, avro, slot, path, fid)
            return
        u = self.fresh("u")
        self.out(f"int {u}; RD_UNION({u}, {fid});")
        with self.block(f"if ({u} == {null})"):
            self.empty(col, slot, valid=False)
        with self.block("else"):
            self.out(f"VSET({self.ref(col.validity)}, {slot});")  # type: ignore[arg-type]
            self.decode_value(col, avro, slot, path, fid)

    def decode_value(self, col: Col, avro: AvroType, slot: str, path: str, fid: int) -> None:
        kind = avro.kind
        v = self.ref(col.values) if col.values is not None else ""
        if kind in ("long", "timestamp"):
            self.out(f"RD_LONG({v}[{slot}], {fid});")
        elif kind == "int":
            self.out(f"RD_INT({v}[{slot}], {fid});")
        elif kind in ("float", "double"):
            size = _FIXED[kind][1]  # little-endian IEEE on the wire and here: a plain copy
            self.out(f"CHECK({size}, {fid}); memcpy(&{v}[{slot}], p, {size}); p += {size};")
        elif kind == "boolean":
            b = self.fresh("t")
            self.out(f"uint8_t {b}; RD_BOOL({b}, {fid}); if ({b}) VSET({v}, {slot});")
        elif kind in ("string", "bytes"):
            self.decode_varlen(col, kind == "string", v, slot, fid)
        elif kind == "array":
            self.decode_array(col, avro, v, slot, path, fid)
        elif kind == "record":
            func = self.record_function(col, avro, path)
            self.out(f"p = {func}(c, p, end, {slot}); if (UNLIKELY(!p)) FAIL;")
        else:  # pragma: no cover - parse_avro admits nothing else
            raise SchemaError(f"cannot decode Avro {kind}")

    def decode_varlen(self, col: Col, is_string: bool, offsets: str, slot: str, fid: int) -> None:
        d, n = col.data, self.fresh("n")
        used = f"c->vlen[{d}]"
        self.out(f"int64_t {n}; RD_LEN({n}, {fid});")
        if is_string:
            self.out(f"if (UNLIKELY(!utf8_ok(p, {n}))) ERR(E_UTF8, {fid});")
        self.out(
            f"if (UNLIKELY({used} + {n} > c->cap[{d}]) && grow_data(c, {d}, {used} + {n}))"
            f" ERR(E_NOMEM, {fid});"
        )
        copy = "memcpy" if is_string else "copy_value"
        self.out(f"{copy}(c->buf[{d}] + {used}, p, (size_t){n}); {used} += {n}; p += {n};")
        if is_string:
            self.out(f"if (UNLIKELY({used} > INT32_MAX)) ERR(E_TOOBIG, {fid});")
        self.out(f"{offsets}[{slot} + 1] = {used};")

    def decode_array(
        self, col: Col, avro: AvroType, offsets: str, slot: str, path: str, fid: int
    ) -> None:
        assert avro.items is not None and col.child_level is not None
        lvl = col.child_level
        s, n, k = self.fresh("s"), self.fresh("n"), self.fresh("k")
        self.out(f"int64_t {s} = c->llen[{lvl}];")
        with self.block("for (;;)"):
            self.out(f"int64_t {n};")
            self.block_count(n, avro.items, avro.items_null, fid)
            self.out(f"if ({n} == 0) break;")
            self.out(
                f"if (UNLIKELY({s} + {n} > c->lcap[{lvl}]) && grow_level(c, {lvl}, {s} + {n}))"
                f" ERR(E_NOMEM, {fid});"
            )
            with self.block(f"for (int64_t {k} = 0; {k} < {n}; {k}++, {s}++)"):
                self.decode(col.children[0], avro.items, avro.items_null, s, path)
        self.out(f"c->llen[{lvl}] = {s};")
        self.out(f"if (UNLIKELY({s} > INT32_MAX)) ERR(E_TOOBIG, {fid});")
        self.out(f"{offsets}[{slot} + 1] = (int32_t){s};")

    def block_count(self, n: str, items: AvroType, items_null: int | None, fid: int) -> None:
        if items_null is not None or items.min_size() > 0:
            self.out(f"RD_BLOCK({n}, {fid});")
        else:  # items of zero bytes cannot be bounded by the input; bound them by a constant
            self.out(
                f"RD_LONG({n}, {fid}); if ({n} < 0) {{ int64_t z_; RD_LONG(z_, {fid}); "
                f"{n} = -{n}; }} if (UNLIKELY({n} < 0 || {n} > (1 << 24))) ERR(E_COUNT, {fid});"
            )

    def record_function(self, col: Col, avro: AvroType, path: str) -> str:
        func = self.fresh(f"rec_{(avro.name or 'record').rpartition('.')[2]}_")
        wanted = {f.name: c for f, c in zip(col.type, col.children, strict=True)}

        def fill() -> None:
            for name, typ, null in avro.fields:
                sub = f"{path}.{name}" if path else name
                if name in wanted:
                    self.decode(wanted[name], typ, null, "s", sub)
                else:
                    self.skip(typ, null, sub)

        self.function(
            f"static const uint8_t *{func}(Ctx *c, const uint8_t *p, const uint8_t *end,"
            " int64_t s)",
            col.level,
            fill,
        )
        return func

    # -- null and empty values -----------------------------------------------------------
    def empty(self, col: Col, slot: str, valid: bool) -> None:
        """Fill ``col`` at ``slot`` with Arrow's empty value; mark it valid or leave it null."""
        if valid and col.validity is not None:
            self.out(f"VSET({self.ref(col.validity)}, {slot});")
        t = col.type
        if col.child_level is not None:
            self.out(f"{self.ref(col.values)}[{slot} + 1] = (int32_t)c->llen[{col.child_level}];")  # type: ignore[arg-type]
        elif col.data is not None:
            self.out(f"{self.ref(col.values)}[{slot} + 1] = c->vlen[{col.data}];")  # type: ignore[arg-type]
        elif pa.types.is_struct(t):
            # pyarrow gives a null struct's children empty (valid) values; so do we.
            self.out(f"{self.empty_function(col)}(c, {slot});")
        elif not pa.types.is_boolean(t):  # bool bits start at 0 already
            self.out(f"{self.ref(col.values)}[{slot}] = 0;")  # type: ignore[arg-type]

    def empty_function(self, col: Col) -> str:
        if id(col) in self.empties:
            return self.empties[id(col)]
        func = self.fresh("empty_")
        self.empties[id(col)] = func

        def fill() -> None:
            for child in col.children:
                self.empty(child, "s", valid=True)

        self.function(f"static void {func}(Ctx *c, int64_t s)", col.level, fill, ret="return;")
        return func

    # -- walking past unwanted values ----------------------------------------------------
    def skip(self, avro: AvroType, null: int | None, path: str) -> None:
        fid = self.fid(path)
        if null is None:
            self.skip_value(avro, fid)
            return
        u = self.fresh("u")
        self.out(f"int {u}; RD_UNION({u}, {fid});")
        with self.block(f"if ({u} != {null})"):
            self.skip_value(avro, fid)

    def skip_value(self, avro: AvroType, fid: int) -> None:
        kind = avro.kind
        if kind in ("long", "int", "timestamp"):
            self.out(f"SKIP_VARINT({fid});")
        elif kind in ("float", "double"):
            self.out(f"CHECK({_FIXED[kind][1]}, {fid}); p += {_FIXED[kind][1]};")
        elif kind == "boolean":
            self.out(f"CHECK(1, {fid}); p += 1;")
        elif kind == "string":
            self.out(f"SKIP_STRING({fid});")  # the reference rejects bad UTF-8 anywhere
        elif kind == "bytes":
            self.out(f"SKIP_BYTES({fid});")
        else:
            self.out(f"p = {self.skip_function(avro)}(c, p, end); if (UNLIKELY(!p)) FAIL;")

    def skip_function(self, avro: AvroType) -> str:
        """A ``skip_N`` C function for a record or array type, emitted once per type."""
        if id(avro) in self.skips:
            return self.skips[id(avro)]
        label = avro.name or "array"
        func = self.fresh(f"skip_{label.rpartition('.')[2]}_")
        self.skips[id(avro)] = func

        def fill() -> None:
            if avro.kind == "record":
                for name, typ, null in avro.fields:
                    self.skip(typ, null, f"{label}.{name} (skipped)")
                return
            assert avro.items is not None
            fid = self.fid(f"array of {avro.items.name or avro.items.kind} (skipped)")
            n, k = self.fresh("n"), self.fresh("k")
            with self.block("for (;;)"):
                self.out(f"int64_t {n}; RD_LONG({n}, {fid});")
                self.out(f"if ({n} == 0) break;")
                with self.block(f"if ({n} < 0)"):  # the writer recorded the block size: jump
                    self.out(f"int64_t z_; RD_LEN(z_, {fid}); p += z_; continue;")
                self.out(f"if (UNLIKELY({n} > end - p)) ERR(E_COUNT, {fid});")
                with self.block(f"for (int64_t {k} = 0; {k} < {n}; {k}++)"):
                    self.skip(avro.items, avro.items_null, f"item of {label} (skipped)")

        self.function(
            f"static const uint8_t *{func}(Ctx *c, const uint8_t *p, const uint8_t *end)",
            None,
            fill,
        )
        return func


class _Block:
    """``with em.block("if (x)"):`` emits a braced block, indented."""

    def __init__(self, em: _Emitter, head: str) -> None:
        self.em, self.head = em, head

    def __enter__(self) -> None:
        self.em.out(self.head + " {")
        self.em.cur.indent += 1

    def __exit__(self, *exc: object) -> None:
        self.em.cur.indent -= 1
        self.em.out("}")


_DRIVER = r"""
#undef ON_ERR
#define ON_ERR goto fail
/* Decode `count` datums: back to back in `block` (starts[] gets each one's offset), or one per
   ptrs[i]/lens[i]. Returns 0, or -1 with c->err_* describing the first problem. */
static int run(Ctx *c, int64_t count, const uint8_t *block, int64_t blen, int64_t *starts,
               const uint8_t *const *ptrs, const int64_t *lens) {
    const uint8_t *p = block, *end = block ? block + blen : NULL, *base = block, *start = p;
    int64_t s0;
    for (s0 = 0; s0 < count; s0++) {
        if (block) { start = p; starts[s0] = p - block; }
        else { p = start = base = ptrs[s0]; end = p + lens[s0]; }
        p = ROOT(c, p, end, s0);
        if (UNLIKELY(!p)) goto fail;
        if (!block && UNLIKELY(p != end)) ERR(E_TRAILING, 0);
    }
    if (block) { start = p; starts[count] = p - block; if (UNLIKELY(p != end)) ERR(E_TRAILING, 0); }
    c->llen[0] = count;
    copy_done();
    return 0;
fail:
    copy_done();
    c->err_index = s0;
    c->err_start = start - base;
    c->err_pos = (const uint8_t *)(intptr_t)c->err_ptr - base;
    return -1;
}

int fd_decode_block(Ctx *c, const uint8_t *data, int64_t len, int64_t count, int64_t *starts) {
    return run(c, count, data, len, starts, NULL, NULL);
}

int fd_decode_ptrs(Ctx *c, const uint8_t *const *ptrs, const int64_t *lens, int64_t count) {
    return run(c, count, NULL, 0, NULL, ptrs, lens);
}
"""


def emit(avro_schema: Any, target: pa.Schema, label: str = "") -> tuple[str, Layout]:
    """Generate the C source of a decoder for ``target`` (a projection of the alert schema).

    Parameters
    ----------
    avro_schema : dict
        The fastavro-parsed alert schema (``AlertSchema.avro``).
    target : pyarrow.Schema
        The wanted columns, as returned by ``engine.alerts.schema.project_schema``.
    label : str
        A comment for the generated file's header (schema version and projection).

    Returns
    -------
    tuple of (str, Layout)
        The C source and the description of its output buffers.
    """
    root = parse_avro(avro_schema)
    em = _Emitter()
    root_col = em.column(pa.struct(list(target)), root, False, 0)
    top = em.record_function(root_col, root, "")

    def table(name: str, ctype: str, values: list[int]) -> str:
        return f"static const {ctype} {name}[NB] = {{{', '.join(map(str, values or [0]))}}};"

    nb, nl = max(1, len(em.bufs)), max(1, em.nlevels)
    src = [
        f"/* minibroker fast decoder (generated; do not edit): {label} */",
        PRELUDE,
        f"#define NB {nb}\n#define NL {nl}",
        "struct Ctx {\n"
        "    uint8_t *buf[NB]; int64_t cap[NB]; int64_t vlen[NB];\n"
        "    int64_t lcap[NL]; int64_t llen[NL];\n"
        "    int64_t err_code, err_index, err_start, err_pos, err_field, err_ptr;\n"
        "};",
        table("BUF_KIND", "int8_t", [b.kind for b in em.bufs]),
        table("BUF_LEVEL", "int16_t", [b.level for b in em.bufs] or [-2]),
        table("BUF_WIDTH", "int8_t", [b.width for b in em.bufs]),
        RUNTIME,
        "#define ON_ERR return NULL\n#define FAIL return NULL",
        *em.protos,
        *em.funcs,
        f"#define ROOT {top}",
        _DRIVER,
    ]
    layout = Layout(target, em.bufs, nl, root_col.children, em.fields)
    return "\n".join(src) + "\n", layout
