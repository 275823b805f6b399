"""Formats: how a delivered match is written for people and other systems.

Each module turns a match (the headline fields of a user's stream entry, and the decoded alert
when it is at hand) into bytes in one format: JSON lines for terminals and scripts, VOEvent 2.0
for the Virtual Observatory. Formats import only the alert data model, configuration and
errors; they never touch Redis or the network (that is :mod:`engine.sinks`).
"""
