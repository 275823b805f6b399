"""Decode: a visit's raw alerts → one ``pyarrow.RecordBatch``, reading only the columns filters
use. The generated-C decoder (:mod:`engine.decode._fast`) does the work; fastavro is the
reference every faster path is tested against.
"""

from engine.config import Config
from engine.decode.batch import VisitBatch, decode_block, decode_messages, decode_reference

__all__ = ["VisitBatch", "configure", "decode_block", "decode_messages", "decode_reference"]


def configure(config: Config | None) -> None:
    """Make the decoder follow ``config`` (compiler, cache directory, decoder choice)."""
    from engine.decode._fast import configure as _configure

    _configure(config)
