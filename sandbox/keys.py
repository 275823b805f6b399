"""Typed identities: which user's filter a key names.

A filter is known by its owner and its name. The engine and the streams spell that as
``"owner/name"``; inside the sandbox it is a :class:`FilterKey`, parsed once where a key comes
in (:meth:`FilterKey.parse`) and spelled again only where one goes out (``str(key)``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FilterKey", "display_name"]


@dataclass(frozen=True, order=True)
class FilterKey:
    """One user's filter: ``owner`` (the user) and ``name`` (the filter's name)."""

    owner: str
    name: str

    @classmethod
    def parse(cls, key: str | FilterKey) -> FilterKey:
        """A key from its string form ``"owner/name"`` (the owner is the part before the first
        slash; a key without one is its own owner's only filter)."""
        if isinstance(key, FilterKey):
            return key
        owner, _slash, name = key.partition("/")
        return cls(owner, name)

    def __str__(self) -> str:
        return f"{self.owner}/{self.name}" if self.name else self.owner


def display_name(key: str | FilterKey, filename: str) -> str:
    """How messages name a filter: ``owner/name.py`` (never where the file lies on the
    server); a key without an owner's name part falls back to ``filename``."""
    k = FilterKey.parse(key)
    return f"{k}.py" if k.name else filename
