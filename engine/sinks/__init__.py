"""Sinks: where matches go once a filter has selected them.

The users' Redis streams are the primary sink; the VTP forwarder reads a user's stream and
pushes each new match, rendered by :mod:`engine.formats`, to the VTP broker that user
registered. Sinks read configuration and formats; they never run user code.
"""
