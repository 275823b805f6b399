"""Formats: how a delivered match is rendered for its reader (JSON lines, Avro, VOEvent 2.0).
Pure functions of an entry; no I/O.
"""
