"""The registry: which filters are active, who owns them, and their versions. The directory
form (``DIR/<user>/<name>.py``) today; the Redis registry with users, submissions and
statistics joins here.
"""

from engine.registry.directory import ActiveFilter, FilterSet, discover

__all__ = ["ActiveFilter", "FilterSet", "discover"]
