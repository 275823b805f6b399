"""The alert data model, with no I/O: schemas and their Arrow form, the Confluent wire framing,
and the field facts several stages share (headline fields, bands, the photometric zero point).

Everything above it (sources, decoding, evaluation, delivery) speaks in these terms.
"""
