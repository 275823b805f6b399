"""VTP: push each user's new matches, as VOEvents, to the VTP broker that user registered.

A user registers receivers (``host:port`` of their own broker, e.g. Comet run with
``--receive``); the forwarder connects to each as a VOEvent Transport Protocol *author*:

- every message is a 4-byte big-endian length followed by that many bytes of XML;
- one connection per packet: connect, send the VOEvent, wait for the broker's ``ack`` or
  ``nak``, close. That is how Comet's own ``comet-sendvo`` talks to a broker, and Comet's
  receiver closes the connection after each event anyway; keeping one open would race that
  close and could resend a packet the broker already took;
- an ``iamalive`` from the broker while we wait is answered with an ``iamalive`` response;
- a ``nak`` is final for that packet: the reason is kept in the stats and the next packet goes.
  A broker NAKs an IVORN it has already seen, which is what a resend after a crash produces;
- a broker that cannot be reached, times out or drops the connection before answering gets the
  same packet again after a backoff (1 s doubling up to ``max_backoff_s``); the last such error
  is kept for ``vtp list``;
- receivers must have public addresses (checked after resolving, on every connection) unless
  the operator sets ``vtp_allow_private``: users choose the host, and must not be able to aim
  the service at its own network.

Where each receiver has got to is the id of the last stream entry it answered for, kept in Redis
beside the registration and moved only after the answer: a restarted forwarder resumes there,
losing nothing; at worst the one packet in flight is sent again, and the broker NAKs it.

Keys (one user's keys share the ``{user}`` hash tag, as the user's stream does):

=====================================  ======  ============================================
``minibroker:{<user>}:vtp``            hash    ``host:port`` → position (last entry handled)
``minibroker:{<user>}:vtp:stats``      hash    ``host:port|ack``, ``|nak``, ``|skip``,
                                               ``|error``, ``|last_nak``, ``|last_error``
``minibroker:{!engine}:vtp_users``     set     users with at least one receiver
=====================================  ======  ============================================
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import redis
from lxml import etree

from engine.errors import ConfigError, DeliveryError, MinibrokerError
from engine.formats.voevent import VOEventSettings, match_from_entry, render
from engine.registry import keys
from engine.sinks.streams import read_packet, stream_key

__all__ = [
    "Forwarder",
    "Receiver",
    "ReceiverStatus",
    "Reply",
    "Verdict",
    "add_receiver",
    "forward",
    "frame_message",
    "list_receivers",
    "registered",
    "remove_receiver",
    "send_packet",
]

log = logging.getLogger("minibroker.vtp")

TRANSPORT_NS = "http://www.telescope-networks.org/xml/Transport/v1.1"
_LENGTH = struct.Struct(">I")
# VTP peers refuse messages of 100 kB or more; a reply bigger than this is not VTP.
MAX_MESSAGE = 100_000
USERS_KEY = keys.engine_key("vtp_users")

Describe = Callable[[str, str, str], str]
"""``describe(user, filter, version)`` → the filter's docstring ("" when unknown)."""


def _text(value: Any) -> str:
    """A reply from redis-py (bytes, as clients here do not decode responses) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _packet(client: redis.Redis, fields: dict[bytes, bytes]) -> bytes | None:
    """The full packet of a match entry: the one place the forwarder reads packets from (the
    packet store, :func:`engine.sinks.streams.read_packet`)."""
    return read_packet(client, fields)


# A user's name is a hash tag, so that all of one user's keys land on one cluster slot.
_receivers_key = keys.vtp_key
_stats_key = keys.vtp_stats_key


@dataclass(frozen=True, order=True)
class Receiver:
    """A VTP broker listening for authors: ``host:port``."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Receiver:
        """``host:port`` or ``[ipv6]:port`` → Receiver."""
        host, sep, port = text.strip().rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"receiver {text!r}: give HOST:PORT of your VTP broker, e.g. "
                "vo.example.org:8098 (the port Comet's --receive listens on)"
            )
        return cls(host, int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ReceiverStatus:
    """One registered receiver and how forwarding to it has gone."""

    receiver: Receiver
    position: str
    acked: int = 0
    nakked: int = 0
    last_nak: str = ""
    last_error: str = ""


class Verdict(Enum):
    """What a broker answered for one packet."""

    ACK = "ack"
    NAK = "nak"


@dataclass(frozen=True)
class Reply:
    """A broker's answer to one packet; ``reason`` is a NAK's ``Meta/Result``."""

    verdict: Verdict
    reason: str = ""


# ---- registration --------------------------------------------------------------------------


def add_receiver(client: redis.Redis, user: str, receiver: Receiver, *, since: str = "now") -> str:
    """Register ``receiver`` for ``user``'s matches; returns the position forwarding starts from.

    ``since="now"`` forwards only matches delivered from now on; ``"0"`` also every match the
    stream still holds. Registering again keeps the existing position.
    """
    if since not in ("now", "0"):
        raise ConfigError(
            f"--since {since!r}: give 'now' (new matches only) or '0' (everything kept)"
        )
    start = "0-0"
    if since == "now":
        try:
            info: Any = client.xinfo_stream(stream_key(user))
            start = _text(info["last-generated-id"])
        except redis.ResponseError:  # no stream yet: everything to come is new
            start = "0-0"
    client.hsetnx(_receivers_key(user), str(receiver), start)
    client.sadd(USERS_KEY, user)
    position = client.hget(_receivers_key(user), str(receiver))
    return _text(position) if position else start


def remove_receiver(client: redis.Redis, user: str, receiver: Receiver) -> bool:
    """Stop forwarding ``user``'s matches to ``receiver``; False if it was not registered."""
    removed = bool(client.hdel(_receivers_key(user), str(receiver)))
    stats = _stats_key(user)
    client.hdel(
        stats,
        *(f"{receiver}|{k}" for k in ("ack", "nak", "skip", "error", "last_nak", "last_error")),
    )
    if not client.hlen(_receivers_key(user)):
        client.srem(USERS_KEY, user)
    return removed


def list_receivers(client: redis.Redis, user: str) -> list[ReceiverStatus]:
    """``user``'s receivers with their positions and counts, sorted by address."""
    positions: Any = client.hgetall(_receivers_key(user))
    stats_raw: Any = client.hgetall(_stats_key(user))
    stats = {_text(k): _text(v) for k, v in stats_raw.items()}
    out = []
    for name, position in positions.items():
        r = _text(name)
        out.append(
            ReceiverStatus(
                Receiver.parse(r),
                _text(position),
                int(stats.get(f"{r}|ack", 0)),
                int(stats.get(f"{r}|nak", 0)),
                stats.get(f"{r}|last_nak", ""),
                stats.get(f"{r}|last_error", ""),
            )
        )
    return sorted(out, key=lambda s: s.receiver)


def registered(
    client: redis.Redis, users: Iterable[str] | None = None
) -> list[tuple[str, Receiver]]:
    """Every (user, receiver) registered, optionally only for ``users``."""
    members: Any = client.smembers(USERS_KEY)
    names = sorted(_text(m) for m in members) if users is None else sorted(users)
    return [(u, s.receiver) for u in names for s in list_receivers(client, u)]


# Moves the position only while the receiver is still registered (a removal wins).
_ADVANCE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[1] .. '|' .. ARGV[3], 1)
if ARGV[3] == 'nak' then redis.call('HSET', KEYS[2], ARGV[1] .. '|last_nak', ARGV[4]) end
return 1
"""


# ---- the wire ------------------------------------------------------------------------------


def frame_message(message: bytes) -> bytes:
    """VTP framing: 4-byte big-endian length, then the message."""
    return _LENGTH.pack(len(message)) + message


def _read_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(n - got)
        if not chunk:
            raise DeliveryError(
                "the broker closed the connection before answering (if it keeps "
                "doing so, check that its author whitelist lets this service in)"
            )
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _read_message(sock: socket.socket) -> bytes:
    (length,) = _LENGTH.unpack(_read_exact(sock, _LENGTH.size))
    if length >= MAX_MESSAGE:
        raise DeliveryError(
            f"the broker announced a {length}-byte message; VTP messages stay "
            "under 100 kB: is this port a VTP broker?"
        )
    return _read_exact(sock, length)


def _iamalive_response(incoming: etree._Element, author_ivorn: str) -> bytes:
    root = etree.Element(
        f"{{{TRANSPORT_NS}}}Transport",
        {"role": "iamalive", "version": "1.0"},
        nsmap={"trn": TRANSPORT_NS},
    )
    etree.SubElement(root, "Origin").text = incoming.findtext("Origin") or author_ivorn
    etree.SubElement(root, "Response").text = author_ivorn
    etree.SubElement(root, "TimeStamp").text = dt.datetime.now(dt.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def _address(receiver: Receiver, allow_private: bool) -> tuple[Any, ...]:
    """The socket address to connect to, resolved once and checked: by default only public
    addresses, so that a user cannot aim the forwarder at the service's own network."""
    try:
        infos = socket.getaddrinfo(receiver.host, receiver.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DeliveryError(
            f"VTP broker {receiver}: cannot resolve {receiver.host} ({exc.strerror})"
        ) from None
    for family, _, _, _, address in infos:
        ip = ipaddress.ip_address(address[0])
        if allow_private or ip.is_global:
            return (family, address)
    raise DeliveryError(
        f"VTP broker {receiver}: {receiver.host} is not a public address ({infos[0][4][0]}); "
        "register a broker reachable from the internet, or (operator) set vtp_allow_private"
    )


def send_packet(
    receiver: Receiver,
    packet: bytes,
    *,
    author_ivorn: str,
    timeout_s: float = 20.0,
    allow_private: bool = False,
) -> Reply:
    """Send one VOEvent to a VTP broker as an author and return its ack or nak.

    Raises :class:`DeliveryError` when the broker's address is not public (unless
    ``allow_private``), it cannot be reached, times out, closes the connection before
    answering or answers with something that is not VTP.
    """
    where = f"VTP broker {receiver}"
    family, address = _address(receiver, allow_private)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(address)
            sock.sendall(frame_message(packet))
            deadline = time.monotonic() + timeout_s
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
                    raise DeliveryError(f"{where}: no ack or nak within {timeout_s:g} s")
                raw = _read_message(sock)
                try:
                    message = etree.fromstring(raw)
                except etree.XMLSyntaxError as exc:
                    raise DeliveryError(
                        f"{where}: answered with text that is not XML ({exc})"
                    ) from None
                role = message.get("role")
                if role == "iamalive":
                    sock.sendall(frame_message(_iamalive_response(message, author_ivorn)))
                elif role == "ack":
                    return Reply(Verdict.ACK)
                elif role == "nak":
                    return Reply(Verdict.NAK, message.findtext("Meta/Result") or "no reason given")
                else:
                    log.warning("%s: ignoring a %r message while waiting for ack/nak", where, role)
    except DeliveryError as exc:
        if str(exc).startswith(where):
            raise
        raise DeliveryError(f"{where}: {exc}") from None
    except OSError as exc:
        raise DeliveryError(f"{where}: {exc.strerror or exc}") from None


# ---- forwarding ----------------------------------------------------------------------------


def _no_description(user: str, filter_name: str, version: str) -> str:
    return ""


@dataclass
class Forwarder:
    """Forwards one user's matches to one receiver, from the position kept in Redis."""

    client: redis.Redis
    user: str
    receiver: Receiver
    settings: VOEventSettings
    describe: Describe = _no_description
    timeout_s: float = 20.0
    max_backoff_s: float = 60.0
    allow_private: bool = False
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._advance = self.client.register_script(_ADVANCE)

    def position(self) -> str | None:
        """The last entry handled, or None once the receiver is no longer registered."""
        value = self.client.hget(_receivers_key(self.user), str(self.receiver))
        return _text(value) if value is not None else None

    def step(self, block_ms: int = 1000, count: int = 100) -> int:
        """Forward what is pending (waiting up to ``block_ms`` for something new); returns
        the number of entries handled. Retries a broker that fails until ``stop`` is set."""
        position = self.position()
        if position is None:
            return 0
        batch: Any = self.client.xread(
            {stream_key(self.user): position}, count=count, block=block_ms or None
        )
        handled = 0
        for raw_id, fields in batch[0][1] if batch else []:
            entry_id = _text(raw_id)
            verdict, reason = "skip", ""
            if fields.get(b"kind", b"match") == b"match":
                try:
                    packet = self._render(entry_id, fields)
                except MinibrokerError as exc:
                    # A packet that cannot be decoded would block the user's feed for good.
                    log.error(
                        "%s: entry %s cannot be rendered, skipped: %s", self.user, entry_id, exc
                    )
                    packet = None
                    verdict, reason = "error", str(exc)
                if packet is not None:
                    reply = self._deliver(entry_id, packet)
                    if reply is None:  # stopping
                        return handled
                    verdict, reason = reply.verdict.value, reply.reason
            if not self._advance(
                keys=[_receivers_key(self.user), _stats_key(self.user)],
                args=[str(self.receiver), entry_id, verdict, reason],
            ):
                return handled  # removed meanwhile
            handled += 1
        return handled

    def _render(self, entry_id: str, fields: dict[bytes, bytes]) -> bytes:
        filter_name = fields[b"filter"].decode()
        version = fields.get(b"filter_version", b"").decode()
        match = match_from_entry(
            entry_id,
            fields,
            user=self.user,
            packet=_packet(self.client, fields),
            description=self.describe(self.user, filter_name, version),
        )
        return render(match, self.settings)

    def _deliver(self, entry_id: str, packet: bytes) -> Reply | None:
        backoff = min(1.0, self.max_backoff_s)
        while not self.stop.is_set():
            try:
                reply = send_packet(
                    self.receiver,
                    packet,
                    author_ivorn=self.settings.author_ivorn,
                    timeout_s=self.timeout_s,
                    allow_private=self.allow_private,
                )
            except DeliveryError as exc:
                log.warning("%s: %s; trying again in %.0f s", self.user, exc, backoff)
                self.client.hset(
                    _stats_key(self.user),
                    f"{self.receiver}|last_error",
                    f"{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ} {exc}",
                )
                self.stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            self.client.hdel(_stats_key(self.user), f"{self.receiver}|last_error")
            if reply.verdict is Verdict.ACK:
                log.info("%s → %s: entry %s acknowledged", self.user, self.receiver, entry_id)
            else:
                log.warning(
                    "%s: %s refused entry %s: %s", self.user, self.receiver, entry_id, reply.reason
                )
            return reply
        return None

    def run(self) -> None:
        """Forward until ``stop`` is set or the receiver is removed."""
        while not self.stop.is_set() and self.position() is not None:
            self.step()

    def pending(self) -> int:
        """Entries on the stream after the position (0 when unregistered)."""
        position = self.position()
        if position is None:
            return 0
        after: Any = self.client.xrange(stream_key(self.user), min=f"({position}", count=1)
        return len(after)


def _run_logged(fw: Forwarder) -> None:
    try:
        fw.run()
    except Exception:  # the supervisor starts it again at its next refresh
        log.exception("%s → %s: forwarder stopped; restarting", fw.user, fw.receiver)


def forward(
    client: redis.Redis,
    settings: VOEventSettings,
    *,
    users: Iterable[str] | None = None,
    stop: threading.Event | None = None,
    until_idle: bool = False,
    describe: Describe = _no_description,
    refresh_s: float = 2.0,
    timeout_s: float = 20.0,
    max_backoff_s: float = 60.0,
    allow_private: bool = False,
) -> None:
    """Run one forwarder thread per registered (user, receiver) until ``stop`` is set.

    Receivers added or removed while it runs are picked up every ``refresh_s``. With
    ``until_idle`` it returns once every receiver has caught up with its stream (for cron jobs
    and tests); a receiver that keeps failing keeps it running, as it must not lose packets.
    """
    stop = stop or threading.Event()
    wanted = set(users) if users is not None else None
    running: dict[tuple[str, Receiver], tuple[Forwarder, threading.Thread]] = {}
    try:
        while not stop.is_set():
            current = set(registered(client, wanted))
            for key in current - running.keys():
                fw = Forwarder(
                    client,
                    key[0],
                    key[1],
                    settings,
                    describe=describe,
                    timeout_s=timeout_s,
                    max_backoff_s=max_backoff_s,
                    allow_private=allow_private,
                )
                thread = threading.Thread(
                    target=_run_logged, args=(fw,), name=f"vtp {key[0]} {key[1]}", daemon=True
                )
                thread.start()
                running[key] = (fw, thread)
            for key in running.keys() - current:
                fw, thread = running.pop(key)
                fw.stop.set()
            for key, (_, thread) in list(running.items()):
                if (
                    not thread.is_alive()
                ):  # its receiver went, or it failed (logged): afresh next round
                    del running[key]
            if until_idle and all(fw.pending() == 0 for fw, _ in running.values()):
                return
            stop.wait(min(refresh_s, 0.1) if until_idle else refresh_s)
    finally:
        for fw, _ in running.values():
            fw.stop.set()
        for _, thread in running.values():
            thread.join(timeout=timeout_s + 2)
