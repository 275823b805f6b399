"""The registry: which filters are active, who owns them, and their versions.

Two forms: a directory (``DIR/<user>/<name>.py``, :mod:`engine.registry.directory`) and Redis
(:mod:`engine.registry.store`: versions, status, statistics, with users and their ACLs in
:mod:`engine.registry.users` and the user's side of submissions in :mod:`engine.registry.inbox`).
Every Redis key is named in :mod:`engine.registry.keys`.
"""

from engine.registry.directory import ActiveFilter, FilterSet, discover
from engine.registry.store import ActiveFilters, FilterRecord, FilterStatus, FilterVersion, Registry

__all__ = [
    "ActiveFilter",
    "ActiveFilters",
    "FilterRecord",
    "FilterSet",
    "FilterStatus",
    "FilterVersion",
    "Registry",
    "discover",
]
