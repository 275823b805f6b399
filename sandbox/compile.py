"""Compile a filter file: check it against the policy, list every problem at once, and find the
columns it can read (so the engine decodes only those)."""

from __future__ import annotations

import ast
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import CodeType

from RestrictedPython import compile_restricted_exec
from RestrictedPython.transformer import RestrictingNodeTransformer

from sandbox.errors import FilterRejected, Problem
from sandbox.policy import POLICY, Policy, check_tree

__all__ = ["CompiledFilter", "compile_filter", "load_filter", "read_filter_source"]

_RP_LINE = re.compile(r"^Line (\d+): (.*)$", re.S)


@dataclass(frozen=True)
class CompiledFilter:
    """A filter that passed the policy.

    Attributes
    ----------
    name : str
        The file's stem (``young_sn`` for ``young_sn.py``).
    filename : str
        Where it came from, as shown in error messages.
    source : str
        The source text (workers compile it again in their own process).
    description : str
        The module docstring.
    version : str
        A short hash of the source: a resubmitted file is a new version.
    columns : frozenset[str] | None
        Names the code mentions (attributes and string constants), from which the engine works
        out the columns to decode and to hand each user's worker (never None for a file
        compiled here: names built at run time are refused where they name a column).
    code : types.CodeType
        The restricted code object, to be executed only by :mod:`sandbox.run`.
    """

    name: str
    filename: str
    source: str
    description: str
    version: str
    columns: frozenset[str] | None
    code: CodeType

    def reads(self, paths: frozenset[str] | set[str]) -> set[str] | None:
        """The subset of ``paths`` (dotted column paths) that this filter may read."""
        if self.columns is None:
            return None
        tokens = self.columns
        return {p for p in paths if all(part in tokens for part in p.split("."))}


def read_filter_source(path: str | os.PathLike[str], policy: Policy = POLICY) -> str:
    """The text of a filter file; raise :class:`FilterRejected` if it cannot be a filter."""
    path = Path(path)
    name = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FilterRejected(
            [Problem(name, None, "file", "no such file; check the path")]
        ) from None
    except OSError as exc:
        raise FilterRejected(
            [Problem(name, None, "file", f"cannot read the file: {exc.strerror}")]
        ) from None
    if len(raw) > policy.max_source_bytes:
        raise FilterRejected(
            [
                Problem(
                    name,
                    None,
                    "too-large",
                    f"the file is {len(raw)} bytes; filters are limited to {policy.max_source_bytes}",
                )
            ]
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FilterRejected(
            [
                Problem(
                    name,
                    None,
                    "encoding",
                    f"the file is not UTF-8 text (byte {exc.start}); save it as UTF-8",
                )
            ]
        ) from None


def load_filter(path: str | os.PathLike[str], policy: Policy = POLICY) -> CompiledFilter:
    """Read and compile a filter file in this process; raise :class:`FilterRejected` listing
    every problem. The service compiles submissions with :func:`sandbox.pool.safe_compile`."""
    return compile_filter(read_filter_source(path, policy), str(path), policy=policy)


def compile_filter(
    source: str, filename: str = "<filter>", policy: Policy = POLICY
) -> CompiledFilter:
    """Compile filter source text; raise :class:`FilterRejected` listing every problem.

    Any exception while parsing or compiling (deep nesting, huge literals) becomes a rejection,
    never a crash of the caller.
    """
    if len(source.encode("utf-8", "replace")) > policy.max_source_bytes:
        raise FilterRejected(
            [
                Problem(
                    filename,
                    None,
                    "too-large",
                    f"filters are limited to {policy.max_source_bytes} bytes",
                )
            ]
        )
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        raise FilterRejected(
            [
                Problem(
                    filename,
                    exc.lineno,
                    "syntax",
                    f"{exc.msg}" + (f": {exc.text.strip()}" if exc.text else ""),
                )
            ]
        ) from None
    except (RecursionError, MemoryError, ValueError, OverflowError) as exc:
        raise FilterRejected(
            [
                Problem(
                    filename,
                    None,
                    "too-complex",
                    f"the file cannot be parsed ({type(exc).__name__}); simplify it",
                )
            ]
        ) from None

    try:
        problems = check_tree(tree, filename, policy) + _dynamic_column_names(tree, filename)
    except Exception as exc:  # every failure at submit is a rejection, never a crash
        raise FilterRejected(
            [
                Problem(
                    filename,
                    None,
                    "too-complex",
                    f"the file cannot be checked ({type(exc).__name__}); simplify it",
                )
            ]
        ) from None
    result = None
    if not any(p.rule == "too-deep" for p in problems):
        # RestrictedPython's transformer recurses per nesting level: past the limit it raises
        # RecursionError, and on other hostile input ValueError or MemoryError, not SyntaxError.
        try:
            result = compile_restricted_exec(source, filename=filename, policy=_Transformer)
        except Exception as exc:
            problems.append(
                Problem(
                    filename,
                    None,
                    "too-complex",
                    f"the file cannot be compiled ({type(exc).__name__}); simplify it",
                )
            )
    if result is not None:
        for message in result.errors:
            m = _RP_LINE.match(message)
            line, text = (int(m.group(1)), m.group(2)) if m else (None, message)
            problem = Problem(filename, line, "restricted", text.rstrip("."))
            if problem not in problems:
                problems.append(problem)
    if problems or result is None or result.code is None:
        problems.sort(key=lambda p: (p.line or 0, p.rule))
        raise FilterRejected(
            problems or [Problem(filename, None, "restricted", "the file could not be compiled")]
        )

    return CompiledFilter(
        name=Path(filename).stem,
        filename=filename,
        source=source,
        description=(ast.get_docstring(tree) or "").strip(),
        version=hashlib.sha256(source.encode()).hexdigest()[:12],
        columns=_columns(tree),
        code=result.code,
    )


class _Transformer(RestrictingNodeTransformer):
    """RestrictedPython's transformer, plus: every value an f-string or ``%`` formats goes
    through the namespace's guards (``_format_value_``, ``_mod_``), so that no value a filter
    can turn into text shows a memory address (``<function f at 0x7f...>``)."""

    def visit_FormattedValue(self, node: ast.FormattedValue) -> ast.AST:
        node = self.node_contents_visit(node)
        call = ast.Call(
            func=ast.Name("_format_value_", ast.Load()),
            args=[node.value, ast.Constant(node.conversion)],
            keywords=[],
        )
        node.value = ast.fix_missing_locations(ast.copy_location(call, node.value))
        node.conversion = -1
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        node = self.node_contents_visit(node)
        if not isinstance(node.op, ast.Mod):
            return node
        call = ast.Call(
            func=ast.Name("_mod_", ast.Load()), args=[node.left, node.right], keywords=[]
        )
        return ast.fix_missing_locations(ast.copy_location(call, node))


def _columns(tree: ast.Module) -> frozenset[str]:
    """Names the filter may read: those it mentions plus those its helpers read for it."""
    names = _mentioned_names(tree)
    from sandbox.helpers import implied_names  # numpy-heavy; only needed once compiled

    return names | implied_names(names)


def _mentioned_names(tree: ast.Module) -> frozenset[str]:
    """Every attribute name, plain name and part of every string constant in the file.

    A column path is readable by the filter only if all its parts are mentioned: a conservative
    superset that survives aliasing (``ds = alerts.diaSource; ds.snr``). Each user's worker
    receives only the columns their filters can read, so a name built at run time
    (``"diaSource." + field``) finds no column there unless its parts are mentioned too; built
    right where a column is named, it is refused at compile time (:func:`_dynamic_column_names`).
    """
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.Name):  # helpers that read columns for the filter (implied_names)
            names.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.update(node.value.split("."))
    return frozenset(names)


_STRING_BUILDERS = frozenset(
    {
        "join",
        "replace",
        "upper",
        "lower",
        "capitalize",
        "title",
        "strip",
        "lstrip",
        "rstrip",
        "format",
    }
)
# Methods of the views that take a column or field name as their first argument.
_NAME_TAKERS = frozenset({"history", "band_field", "get"})


def _built_string(node: ast.AST) -> str | None:
    """What kind of run-time string ``node`` builds, or None if it is not one."""
    if isinstance(node, ast.JoinedStr):
        return "an f-string"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mod):
        if any(
            isinstance(side, ast.Constant) and isinstance(side.value, str) or _built_string(side)
            for side in (node.left, node.right)
        ):
            return "a string built with `+` or `%`"
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Attribute) and node.func.attr in _STRING_BUILDERS:
            return f"a string built with `.{node.func.attr}()`"
        if isinstance(node.func, ast.Name) and node.func.id == "str":
            return "a string built with `str()`"
    return None


def _dynamic_column_names(tree: ast.Module, filename: str) -> list[Problem]:
    """Places where a column is named by a string built at run time (``alerts[f"..."]``,
    ``alerts.history("ps" + "fFlux")``): the engine must know at compile time which columns a
    filter reads, to decode and hand its user's worker only those."""
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript):
            name = node.slice
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _NAME_TAKERS
            and node.args
        ):
            name = node.args[0]
        else:
            continue
        kind = _built_string(name)
        if kind is not None:
            problems.append(
                Problem(
                    filename,
                    getattr(name, "lineno", None),
                    "dynamic-column",
                    f"a column is named by {kind}, known only when the filter runs; write each column "
                    "name out in full (e.g. alerts['diaObject.g_psfFluxMean'], or band_field() for "
                    "per-band fields) so that the service knows which columns your filter reads",
                )
            )
    return problems
