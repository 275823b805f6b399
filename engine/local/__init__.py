"""Laptop tools, never imported by the service path: sample nights (:mod:`.simulate`), local
filter tests and their HTML report, the quick benchmark, the demo, and the embedded Redis server.
Only the CLI and the test helpers import this package.
"""
