"""The active filters: who owns which filter file.

For now filters come from a directory: ``DIR/<user>/<name>.py`` belongs to ``<user>``; files
directly in ``DIR`` belong to the ``owner`` given (``sample_filters/*.py`` run as ``demo``).
Each filter's key is ``"<user>/<name>"``. Every file is compiled through the sandbox; a rejected
file, or a user directory whose name cannot be a user, is reported and left out, never fatal to
the others: :class:`FilterSet` lists every problem at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import ConfigError
from sandbox import CompiledFilter, FilterKey, FilterRejected, read_filter_source, safe_compile_many

__all__ = ["ActiveFilter", "FilterSet", "discover"]


@dataclass(frozen=True)
class ActiveFilter:
    """A compiled filter and its owner."""

    user: str
    compiled: CompiledFilter

    @property
    def key(self) -> str:
        """``"user/name"``, unique across the service (the string form of a
        :class:`sandbox.keys.FilterKey`, which parses it back)."""
        return str(FilterKey(self.user, self.compiled.name))


@dataclass(frozen=True)
class FilterSet:
    """The filters that loaded, the rejections of those that did not, and the directories
    left out (path → why)."""

    active: list[ActiveFilter]
    rejected: dict[str, FilterRejected]
    skipped: dict[str, str] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """Every problem, one message each: skipped directories, then rejected filters."""
        return [f"{path} left out: {why}" for path, why in self.skipped.items()] + [
            f"{key} left out: {rejection}" for key, rejection in self.rejected.items()
        ]


def _user_ok(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "-_." for c in name) and not name.startswith(".")


def discover(directory: str | os.PathLike[str], owner: str = "demo") -> FilterSet:
    """Compile every filter under ``directory`` (see module doc for the layout)."""
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(
            f"{root}: no such filter directory; give --filters DIR with DIR/<user>/<name>.py files"
        )
    found: list[tuple[str, Path]] = [(owner, p) for p in sorted(root.glob("*.py"))]
    skipped: dict[str, str] = {}
    for sub in sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
    ):
        if not _user_ok(sub.name):
            skipped[str(sub)] = (
                f"{sub.name!r} cannot be a user name (use letters, digits, '-', '_' and "
                "'.'); rename the directory"
            )
            continue
        found.extend((sub.name, p) for p in sorted(sub.glob("*.py")))
    active, rejected = [], {}
    readable: list[tuple[str, Path, str]] = []
    for user, path in found:
        if path.name.startswith("_"):
            continue
        try:
            readable.append((user, path, read_filter_source(path)))
        except FilterRejected as exc:
            rejected[str(FilterKey(user, path.stem))] = exc
    # Throwaway processes compile them first (many files each, a deadline per file): hostile
    # source cannot hang or crash us.
    compiled = safe_compile_many([(source, str(path)) for _user, path, source in readable])
    for (user, path, _source), result in zip(readable, compiled, strict=True):
        if isinstance(result, FilterRejected):
            rejected[str(FilterKey(user, path.stem))] = result
        else:
            active.append(ActiveFilter(user, result))
    return FilterSet(active, rejected, skipped)
