"""The public surfaces are small, explicit and real; every deliberate error shares one root."""

from __future__ import annotations

import importlib
import inspect

import pytest

import engine.errors
import sandbox
import sandbox.errors

MODULES = [
    "sandbox",
    "sandbox.compile",
    "sandbox.errors",
    "sandbox.run",
    "sandbox.pool",
    "engine.errors",
    "engine.config",
    "engine.alerts.schema",
    "engine.alerts.wire",
    "engine.alerts.fields",
    "engine.sources.night",
    "engine.decode",
    "engine.evaluate",
    "engine.sinks.streams",
    "engine.formats.json",
    "engine.subscribe",
    "engine.registry",
    "engine.service.pipeline",
    "engine.cli",
    "engine.local.simulate",
    "engine.local.redis_server",
    "engine.local.report",
    "engine.local.bench",
    "engine.formats.voevent",
    "engine.sinks.vtp",
    "engine.registry.keys",
    "engine.registry.store",
    "engine.registry.users",
    "engine.registry.inbox",
    "engine.service.submissions",
    "engine.service.control",
    "engine.formats",
    "engine.formats.avro",
    "engine.sources.kafka",
    "engine.service.serve",
    "engine.service.produce",
    "engine.service.replay",
    "engine.service.visitindex",
    "engine.service.metrics",
    "engine.local.kafka",
    "engine.local.livebench",
]


@pytest.mark.parametrize("name", MODULES)
def test_every_exported_name_exists_and_is_documented(name: str) -> None:
    """Each module's __all__ lists real objects, and public callables carry a docstring."""
    module = importlib.import_module(name)
    assert module.__doc__, f"{name} has no module docstring"
    for attr in module.__all__:
        obj = getattr(module, attr)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert obj.__doc__, f"{name}.{attr} has no docstring"


def test_every_error_shares_the_root() -> None:
    """Catching MinibrokerError catches every error either package raises on purpose."""
    errors = [getattr(engine.errors, n) for n in engine.errors.__all__] + [
        getattr(sandbox.errors, n)
        for n in sandbox.errors.__all__
        if n not in ("Problem", "FaultReason")
    ]
    for cls in errors:
        if issubclass(cls, Warning):  # MinibrokerWarning: a warning, not an error
            continue
        assert issubclass(cls, engine.errors.MinibrokerError), cls
    assert issubclass(sandbox.FilterRejected, sandbox.FilterError)
