"""Sinks: a visit's masks → outputs. Per-user Redis streams (caps, deduplication, visit
markers) today; the VTP forwarder joins here. Only trusted code builds and writes output.
"""
