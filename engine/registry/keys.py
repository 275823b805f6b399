"""Every Redis key minibroker uses, named in this one module (no key string is built elsewhere).

A user's keys carry the user name as a Redis Cluster hash tag, ``minibroker:{alice}:...``, so
they all live in one slot: every script that touches several of them works on a cluster. The
engine's own keys use the tag ``{!engine}`` (``!`` is not allowed in user names); packets are
shared by every user and each has its own tag.

==============================================  ===========================================
key                                             what
==============================================  ===========================================
``minibroker:{alice}:stream``                   the user's matches, ``withheld`` and visit
                                                markers, faults (read by ``subscribe``)
``minibroker:{alice}:seen:<filter>:<version>``  alert ids already delivered (or withheld)
                                                by one filter version: replays add nothing
``minibroker:{alice}:visit:<visit>``            per-visit counters (caps, marker totals)
``minibroker:{alice}:inbox``                    submissions and filter requests (user writes)
``minibroker:{alice}:reply``                    the engine's answers (user reads)
``minibroker:{alice}:filters``                  set of the user's filter names
``minibroker:{alice}:filter:<name>``            hash: status, version, cap, statistics
``minibroker:{alice}:filter:<name>:versions``   list of versions (JSON: code, hash, time)
``minibroker:{alice}:vtp``                      hash: VTP receiver ``host:port`` → position
``minibroker:{alice}:vtp:stats``                hash: per receiver acks, naks, last error
``minibroker:{!engine}:vtp_users``              set of users with a VTP receiver
``minibroker:{!engine}:users``                  set of users created by ``admin add-user``
``minibroker:{!engine}:owners``                 set of users who have filters
``minibroker:{!engine}:epoch``                  bumped on every registry change
``minibroker:{!engine}:secret``                 names packet keys (see :func:`packet_key`)
``minibroker:packet:{<token>}``                 one stored packet (Confluent-framed Avro)
==============================================  ===========================================
"""

from __future__ import annotations

import re

from engine.errors import ConfigError

__all__ = [
    "PACKET_PATTERN",
    "engine_key",
    "filter_key",
    "filters_key",
    "inbox_key",
    "packet_key",
    "reply_key",
    "seen_key",
    "stream_key",
    "user_pattern",
    "validate_name",
    "versions_key",
    "vtp_key",
    "vtp_stats_key",
    "visit_key",
]

PREFIX = "minibroker"
PACKET_PATTERN = f"{PREFIX}:packet:*"
_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63}\Z")


def validate_name(name: str, what: str = "user name") -> str:
    """Return ``name`` if it is a valid user (or filter) name, else raise :class:`ConfigError`.

    Letters, digits, ``-``, ``_`` and ``.``, at most 64, not starting with ``-``: such names
    need no quoting in a key, an ACL rule, a file name or a URL.
    """
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise ConfigError(
            f"{what} {name!r} is not valid: use letters, digits, '-', '_' and '.' "
            "(at most 64, not starting with '-')"
        )
    return name


def _user(user: str) -> str:
    return f"{PREFIX}:{{{user}}}"


def user_pattern(user: str) -> str:
    """Glob matching every key of one user (ACL rules and clean-up)."""
    return f"{_user(user)}:*"


def stream_key(user: str) -> str:
    """The Redis stream a user reads."""
    return f"{_user(user)}:stream"


def seen_key(user: str, filter_name: str, version: str) -> str:
    """Set of alert ids one filter version has delivered or withheld."""
    return f"{_user(user)}:seen:{filter_name}:{version}"


def visit_key(user: str, visit: int) -> str:
    """Hash of one visit's counters for one user."""
    return f"{_user(user)}:visit:{visit}"


def inbox_key(user: str) -> str:
    """Stream the user writes submissions and requests to."""
    return f"{_user(user)}:inbox"


def reply_key(user: str) -> str:
    """Stream the engine answers the user on."""
    return f"{_user(user)}:reply"


def filters_key(user: str) -> str:
    """Set of the user's filter names."""
    return f"{_user(user)}:filters"


def filter_key(user: str, name: str) -> str:
    """Hash with one filter's status, current version, cap and statistics."""
    return f"{_user(user)}:filter:{name}"


def versions_key(user: str, name: str) -> str:
    """List of one filter's versions, oldest first."""
    return f"{_user(user)}:filter:{name}:versions"


def vtp_key(user: str) -> str:
    """Hash of the user's VTP receivers (``host:port``) and each one's forwarding position."""
    return f"{_user(user)}:vtp"


def vtp_stats_key(user: str) -> str:
    """Hash of per-receiver forwarding statistics."""
    return f"{_user(user)}:vtp:stats"


def engine_key(what: str) -> str:
    """One of the engine's own keys (``users``, ``owners``, ``epoch``, ``secret``)."""
    return f"{PREFIX}:{{!engine}}:{what}"


def packet_key(token: str) -> str:
    """Where one packet is stored; ``token`` is a keyed hash of its alert id (unguessable)."""
    return f"{PREFIX}:packet:{{{token}}}"
