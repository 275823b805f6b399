"""Every error minibroker raises on purpose, as one tree.

::

    MinibrokerError                 root: catch this to catch everything below
    ├── ConfigError                 bad setting, flag or environment variable
    ├── SchemaError                 unknown or unusable alert schema version
    ├── SourceError                 a night file or Kafka topic cannot be read
    ├── DecodeError                 one message body is corrupt or truncated
    ├── PublishError                Redis refused or lost a write
    ├── DeliveryError               a user's VTP broker could not be reached or broke the protocol
    ├── ServerError                 the embedded Redis-compatible server failed to start
    ├── FilterError                 (defined in ``sandbox.errors``) a user's filter failed
    │   ├── FilterRejected          compile-time: the file breaks the policy; lists all problems
    │   └── FilterFault             run-time: crash, timeout, memory, bad result, suspended
    └── PoolError                   (``sandbox.errors``) the worker pool itself failed

    MinibrokerWarning               (a ``UserWarning``) something works, but not as well as it
                                    could: the CLI prints it as one line ``minibroker: warning: ...``

Messages say what went wrong, where (file:line, visit, message offset) and what to do next.
This module imports nothing so that both packages can share the root without cycles.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DecodeError",
    "DeliveryError",
    "MinibrokerError",
    "MinibrokerWarning",
    "PublishError",
    "SchemaError",
    "ServerError",
    "SourceError",
]


class MinibrokerError(Exception):
    """Root of every error minibroker raises deliberately."""


class ConfigError(MinibrokerError):
    """A setting, flag or environment variable has an unusable value."""


class SchemaError(MinibrokerError):
    """An alert schema version is unknown or cannot be mapped to Arrow."""


class SourceError(MinibrokerError):
    """A night file, directory or Kafka topic cannot be read."""


class DecodeError(MinibrokerError):
    """One alert message body is corrupt, truncated or of an unknown schema id."""


class PublishError(MinibrokerError):
    """Writing matches to Redis failed."""


class DeliveryError(MinibrokerError):
    """A user's VTP broker could not be reached, or answered outside the protocol."""


class ServerError(MinibrokerError):
    """A private Redis-compatible server could not be started."""


class MinibrokerWarning(UserWarning):
    """Work goes on, slower or with less than asked (a foreign night file, no C compiler).

    Library code emits it with :func:`warnings.warn`; the CLI prints each as one line."""
