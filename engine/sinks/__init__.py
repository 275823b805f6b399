"""Sinks: a visit's masks → outputs. Only trusted code builds and writes output.

- :mod:`.streams`: per-user Redis streams (caps, withheld counts, deduplication, visit markers,
  packets stored once, registry statistics and suspension);
- :mod:`.vtp`: each user's matches as VOEvents to their own VTP broker, position kept in Redis.
"""
