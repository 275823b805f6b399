"""What a filter file may contain: the policy as data, and the AST check that enforces it.

This is the one place the rules live; ``docs/filters-policy.md`` explains them to filter authors.
RestrictedPython runs after these checks and adds its own (no names or attributes starting
with an underscore, no ``exec``/``eval``, guarded attribute and item access).

A filter file is a module docstring (its description, shown to other users), optional
constants and helper functions, and one entry point: ``def filter(alerts)`` returning one
boolean per alert.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from sandbox.errors import Problem

__all__ = ["POLICY", "Policy", "check_tree"]


@dataclass(frozen=True)
class Policy:
    """The rules, as plain data. Each forbidden construct maps to a rule name and the advice
    shown to the author."""

    entry_points: tuple[str, ...] = ("filter", "filter_alert")  # exactly one of these
    second_stage: tuple[str, ...] = ("refine",)  # optional, runs on the survivors only
    allowed_imports: frozenset[str] = frozenset()
    max_source_bytes: int = 100_000
    max_nesting: int = 100  # AST depth; RestrictedPython recurses ~3 frames per level
    forbidden_nodes: tuple[tuple[type[ast.AST], str, str], ...] = (
        (
            ast.Import,
            "no-import",
            "imports are not allowed; everything a filter may use is already in scope (see docs/filters.md)",
        ),
        (
            ast.ImportFrom,
            "no-import",
            "imports are not allowed; everything a filter may use is already in scope (see docs/filters.md)",
        ),
        (
            ast.Global,
            "no-global",
            "`global` is not allowed: a filter keeps no state between visits",
        ),
        (
            ast.Nonlocal,
            "no-nonlocal",
            "`nonlocal` is not allowed: return values instead of rebinding outer names",
        ),
        (ast.ClassDef, "no-class", "classes are not allowed in filters; use functions"),
        (
            ast.Yield,
            "no-generator",
            "`yield` is not allowed: return a column (generator expressions inside calls are fine)",
        ),
        (ast.YieldFrom, "no-generator", "`yield from` is not allowed"),
        (ast.AsyncFunctionDef, "no-async", "async functions are not allowed"),
        (ast.Await, "no-async", "`await` is not allowed"),
        (ast.AsyncFor, "no-async", "`async for` is not allowed"),
        (ast.AsyncWith, "no-async", "`async with` is not allowed"),
        (ast.With, "no-with", "`with` is not allowed: filters open nothing"),
        (
            ast.Try,
            "no-try",
            "`try` is not allowed: a failing filter is reported to you, catching errors would hide them",
        ),
        (ast.Delete, "no-del", "`del` is not allowed"),
        (
            ast.TryStar,
            "no-try",
            "`try`/`except*` is not allowed: a failing filter is reported to you",
        ),
        # Class patterns read attributes (even underscored ones) without the attribute guard.
        (ast.Match, "no-match", "`match` is not allowed; use `if`/`elif` and comparisons"),
    )
    forbidden_names: frozenset[str] = frozenset(
        {
            "exec",
            "eval",
            "compile",
            "open",
            "getattr",
            "setattr",
            "delattr",
            "hasattr",
            "globals",
            "locals",
            "vars",
            "dir",
            "type",
            "id",
            "object",
            "super",
            "memoryview",
            "breakpoint",
            "input",
            "help",
            "exit",
            "quit",
            "classmethod",
            "staticmethod",
            "property",
            "bytearray",
            "bytes",
            "print",
            # builtins that run code, read files or reach the interpreter's internals
            "format",
            "iter",
            "next",
            "aiter",
            "anext",
            "issubclass",
            "callable",
            "repr",
            "ascii",
            "license",
            "credits",
            "copyright",
            "reload",
            # exceptions that end a process or hide a failure instead of reporting it
            "SystemExit",
            "KeyboardInterrupt",
            "GeneratorExit",
            "BaseException",
            "Exception",
            "StopIteration",
            "StopAsyncIteration",
            # modules and objects that lead to files, memory or other processes
            "os",
            "sys",
            "np",
            "numpy",
            "pa",
            "pyarrow",
            "ctypes",
            "builtins",
            "importlib",
            "subprocess",
            "socket",
            "pickle",
            "marshal",
            "gc",
            "inspect",
            "signal",
            "resource",
            "re",
        }
    )
    # What to do instead, for the forbidden names people reach for most.
    advice: tuple[tuple[str, str], ...] = (
        (
            "print",
            "a filter has no output; return a column, and use `minibroker test` to see what passes",
        ),
        ("np", "numpy is not available; use column operators and the helpers (docs/filters.md)"),
        ("numpy", "numpy is not available; use column operators and the helpers (docs/filters.md)"),
        ("format", 'use an f-string such as f"{x:.2f}" or `%` formatting'),
        (
            "getattr",
            "write the attribute out, e.g. `alerts.diaSource.snr`, or index: `alerts['diaSource.snr']`",
        ),
        ("type", "use `isinstance(x, float)`"),
        ("open", "filters read nothing but the alerts they are given"),
        ("exit", "return a column; a filter cannot stop its process"),
        ("quit", "return a column; a filter cannot stop its process"),
        ("SystemExit", "return a column; a filter cannot stop its process"),
    )
    forbidden_attributes: frozenset[str] = frozenset(
        {
            # str.format reaches attributes and items of its arguments ("{0.__class__}")
            "format",
            "format_map",
            # frames, code, tracebacks: the way out of any restricted namespace
            "mro",
            "gi_frame",
            "gi_code",
            "gi_yieldfrom",
            "gi_suspended",
            "cr_frame",
            "cr_code",
            "cr_await",
            "ag_frame",
            "ag_code",
            "ag_await",
            "f_back",
            "f_globals",
            "f_locals",
            "f_builtins",
            "f_code",
            "f_trace",
            "tb_frame",
            "tb_next",
            "co_code",
            "co_consts",
            "func_globals",
            "func_code",
            "im_func",
            "im_self",
            # numpy and buffer internals: raw memory, writable views, files, pickling. Generic
            # words (data, base, view, flags) are left to the namespace's per-type allowlist:
            # they may be column names some day.
            "ctypes",
            "setflags",
            "strides",
            "tobytes",
            "tofile",
            "dump",
            "dumps",
            "getfield",
            "setfield",
            "itemset",
            "byteswap",
        }
    )


POLICY = Policy()


def check_tree(tree: ast.Module, filename: str, policy: Policy = POLICY) -> list[Problem]:
    """Every policy problem in a parsed filter file (empty list: the file is acceptable here)."""
    problems: list[Problem] = []

    def add(node: ast.AST | None, rule: str, message: str) -> None:
        problems.append(Problem(filename, getattr(node, "lineno", None), rule, message))

    has_doc = ast.get_docstring(tree) is not None
    if not has_doc:
        add(
            tree.body[0] if tree.body else None,
            "docstring",
            'a filter starts with a docstring that says what it selects, e.g. """Bright young transients."""',
        )

    entries = [
        n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in policy.entry_points
    ]
    if not entries:
        add(
            None,
            "entry-point",
            "define `def filter(alerts):` returning one boolean per alert "
            "(or `def filter_alert(alert):` returning True/False for one alert)",
        )
    elif len({fn.name for fn in entries}) > 1:
        add(entries[1], "entry-point", "define `filter` or `filter_alert`, not both")
    stages = [
        n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in policy.second_stage
    ]
    for fn in entries + stages:
        args = fn.args
        if len(args.args) != 1 or args.vararg or args.kwarg or args.kwonlyargs or args.posonlyargs:
            add(
                fn,
                "entry-point",
                f"`{fn.name}` takes exactly one argument, e.g. `def {fn.name}(alerts):`",
            )

    for statement in tree.body[1 if has_doc else 0 :]:
        if not isinstance(statement, ast.FunctionDef | ast.Assign | ast.AnnAssign):
            add(
                statement,
                "top-level",
                "at the top level only constants and function definitions are allowed; put logic inside `filter`",
            )

    for node in ast.walk(tree):
        for kind, rule, message in policy.forbidden_nodes:
            if isinstance(node, kind):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    names = (
                        [a.name for a in node.names]
                        if isinstance(node, ast.Import)
                        else [node.module or ""]
                    )
                    if all(n in policy.allowed_imports for n in names):
                        continue
                add(node, rule, message)
        if isinstance(node, ast.Name) and node.id in policy.forbidden_names:
            hint = dict(policy.advice).get(
                node.id, "see docs/filters-policy.md for what filters may use"
            )
            add(node, "forbidden-name", f"`{node.id}` is not available in filters; {hint}")
        elif isinstance(node, ast.Attribute) and node.attr in policy.forbidden_attributes:
            add(
                node,
                "forbidden-attribute",
                f"attribute `.{node.attr}` is not available in filters: it leads to "
                "interpreter or memory internals (see docs/filters-policy.md)",
            )
        elif isinstance(node, ast.Constant) and isinstance(node.value, bytes):
            add(node, "no-bytes", "bytes literals are not needed in filters")

    depth = _max_depth(tree)
    if depth > policy.max_nesting:
        add(
            None,
            "too-deep",
            f"the code nests {depth} levels deep (limit {policy.max_nesting}); simplify the expressions",
        )
    return problems


def _max_depth(tree: ast.AST) -> int:
    deepest = 0
    stack = [(tree, 0)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((c, d + 1) for c in ast.iter_child_nodes(node))
    return deepest
