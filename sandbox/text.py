"""Text from untrusted code on its way out: to a console, a log or a stream.

A filter's exception messages and a rejected file's lines end up in fault entries, operator
logs and terminals; :func:`escape` makes each one a single printable line first.
"""

from __future__ import annotations

import re

__all__ = ["escape"]

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text: object) -> str:
    """``text`` safe for one line of a console, a log or a stream: control and format
    characters (newlines, escape sequences, bidi overrides), line separators and lone
    surrogates written as ``\\n``, ``\\x1b``, ``\\u202e``, ``\\udc80``; CPython's
    ``at 0x...`` addresses dropped. Everything a filter or a rejected file can put into a
    message passes through here."""
    try:
        text = text if isinstance(text, str) else str(text)
    except Exception:  # a value whose text cannot even be built
        return f"<{type(text).__name__}>"
    text = _ADDRESS.sub("", text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _SHORT.get(c) or _hex(c) for c in text)


def _hex(c: str) -> str:
    o = ord(c)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"
