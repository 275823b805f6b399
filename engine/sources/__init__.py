"""Where raw visits come from, whatever form the alerts are in.

- :mod:`.night`: minibroker nights (Avro containers, one block per visit, read where they lie)
  and :func:`open_night`, the one door for every form below;
- :mod:`.foreign`: Avro container files written by other tools, any LSST schema, any codec;
- :mod:`.packets`: directories of single-alert files (Kafka message bodies, bare datums, one-record
  containers);
- :mod:`.block`: :class:`NightBlock`, the raw alerts of one visit that every source yields;
- :mod:`.kafka`: a Kafka consumer group's messages cut into visit batches (the live service),
  reading each message's visit with :mod:`.visitpeek`.

A source yields raw alerts grouped by visit and never decodes
more than it must to find a visit's boundary (foreign forms must decode each alert once to
learn its visit: slower, and said once).
"""

from engine.sources.block import NightBlock
from engine.sources.night import Night, NightForm, night_info, open_night, read_night

__all__ = ["Night", "NightBlock", "NightForm", "night_info", "open_night", "read_night"]
