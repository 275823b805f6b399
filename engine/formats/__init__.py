"""Formats: how a delivered match is rendered for its reader (JSON lines, Avro, VOEvent 2.0).
Pure functions of an entry; no I/O.

:data:`FILE_RENDERERS` maps each ``subscribe --format`` name to the file suffix and the function
that renders one match entry (its fields with the packet put back as ``alert``) to bytes.
"""

from collections.abc import Callable

from engine.formats.avro import render_avro
from engine.formats.json import render_json_file

__all__ = ["FILE_RENDERERS", "Renderer"]

Renderer = Callable[[str, dict[bytes, bytes]], bytes]
"""``render(entry_id, fields) -> bytes``: one match entry as a file's content."""

# Formats that need nothing but the entry; VOEvent needs the user and the settings
# (``engine.formats.voevent.renderer``), so ``subscribe`` builds that one itself.
FILE_RENDERERS: dict[str, tuple[str, Renderer]] = {
    "json": (".json", render_json_file),
    "avro": (".avro", render_avro),
}
