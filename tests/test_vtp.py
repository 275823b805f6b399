"""VTP forwarding against a real Comet broker (PyPI ``comet``, Twisted) on a loopback port:
exactly the user's matches arrive, valid, once, across restarts and broker outages."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from cometbroker import LOCAL_IVO, TRANSPORT_XSD, VOEVENT_XSD, CometBroker
from lxml import etree
from matches import delete_user_keys, publish_packets

from engine.cli import main as cli_main
from engine.errors import ConfigError, DeliveryError
from engine.formats.voevent import VOEventSettings, ivorn
from engine.local.ports import free_port
from engine.sinks import vtp
from engine.sinks.streams import stream_key

SETTINGS = VOEventSettings(authority="minibroker.test")
VOEVENT = etree.XMLSchema(etree.parse(str(VOEVENT_XSD)))
TRANSPORT = etree.XMLSchema(etree.parse(str(TRANSPORT_XSD)))


@pytest.fixture()
def comet(tmp_path: Path):
    """A Comet receiver on a free loopback port, saving what it accepts."""
    with CometBroker(tmp_path / "comet") as broker:
        yield broker


@pytest.fixture()
def two_users(redis_client, unique_user, v11_packets):
    """Two users with real matches: the first all 64 LSSTCam alerts, the second 10 of them."""
    other = unique_user + "b"
    mine = publish_packets(redis_client, unique_user, v11_packets)
    theirs = publish_packets(redis_client, other, v11_packets, name="some", rows=range(10))
    yield unique_user, mine, other, theirs
    delete_user_keys(redis_client, unique_user)
    delete_user_keys(redis_client, other)


def _ivorns(user: str, entries, name: str = "everything") -> set[str]:
    return {ivorn(SETTINGS, user, name, int(f[b"diaSourceId"])) for _, f in entries}


def _received(broker: CometBroker) -> list[str]:
    out = []
    for raw in broker.saved():
        root = etree.fromstring(raw)
        assert VOEVENT.validate(root), VOEVENT.error_log
        out.append(root.get("ivorn"))
    return out


def _last(client, user: str) -> str:  # type: ignore[no-untyped-def]
    """The id of the user's last stream entry (the visit marker after the matches)."""
    return client.xrevrange(stream_key(user), count=1)[0][0].decode()


def test_comet_receives_exactly_the_users_matches(redis_client, two_users, comet) -> None:
    """A receiver registered for one user gets every match of that user, each once and
    schema-valid as Comet saved it, and nothing of the other user; the stats say so."""
    user, mine, other, theirs = two_users
    receiver = vtp.Receiver("127.0.0.1", comet.port)
    vtp.add_receiver(redis_client, user, receiver, since="0")
    vtp.forward(
        redis_client,
        SETTINGS,
        users=[user, other],
        until_idle=True,
        refresh_s=0.1,
        allow_private=True,
    )

    received = _received(comet)
    assert len(received) == len(set(received)) == len(mine) == 64
    assert set(received) == _ivorns(user, mine)
    assert not set(received) & _ivorns(other, theirs, "some")
    [status] = vtp.list_receivers(redis_client, user)
    assert (status.acked, status.nakked, status.position) == (64, 0, _last(redis_client, user))


def test_a_restarted_forwarder_neither_loses_nor_duplicates(
    redis_client, two_users, comet, v11_packets
) -> None:
    """A forwarder stopped part-way resumes from its position in Redis; replaying from an older
    position (a crash between send and save) makes Comet NAK the repeats, so the broker still
    holds each match once; matches arriving later are forwarded too."""
    user, mine, _, _ = two_users
    receiver = vtp.Receiver("127.0.0.1", comet.port)
    vtp.add_receiver(redis_client, user, receiver, since="0")
    first = vtp.Forwarder(redis_client, user, receiver, SETTINGS, allow_private=True)
    assert first.step(block_ms=0, count=20) == 20
    assert first.position() == mine[19][0]

    second = vtp.Forwarder(
        redis_client, user, receiver, SETTINGS, allow_private=True
    )  # "restarted"
    while second.step(block_ms=0):
        pass
    assert sorted(_received(comet)) == sorted(_ivorns(user, mine))

    redis_client.hset(vtp._receivers_key(user), str(receiver), mine[59][0])  # lost the last save
    while second.step(block_ms=0):
        pass
    [status] = vtp.list_receivers(redis_client, user)
    assert (status.acked, status.nakked) == (64, 4)
    assert "Previously seen" in status.last_nak

    later = publish_packets(redis_client, user, v11_packets, name="later", rows=range(3))
    while second.step(block_ms=0):
        pass
    received = _received(comet)
    assert len(received) == len(set(received)) == 67
    assert set(received) == _ivorns(user, mine) | _ivorns(user, later, "later")


def test_an_unreachable_broker_is_retried_until_it_answers(
    redis_client, two_users, tmp_path
) -> None:
    """While nothing listens at the receiver the position stays put; once Comet starts there,
    every pending match arrives."""
    user, mine, _, _ = two_users
    port = free_port()
    receiver = vtp.Receiver("127.0.0.1", port)
    vtp.add_receiver(redis_client, user, receiver, since="0")
    stop = threading.Event()
    worker = threading.Thread(
        target=vtp.forward,
        args=(redis_client, SETTINGS),
        kwargs={
            "users": [user],
            "stop": stop,
            "refresh_s": 0.1,
            "max_backoff_s": 0.2,
            "timeout_s": 5,
            "allow_private": True,
        },
    )
    worker.start()
    try:
        stop.wait(0.8)
        status = vtp.list_receivers(redis_client, user)[0]
        assert status.position == "0-0" and "Connection refused" in status.last_error
        with CometBroker(tmp_path / "late", port=port) as broker:
            for _ in range(200):
                if vtp.list_receivers(redis_client, user)[0].position == _last(redis_client, user):
                    break
                stop.wait(0.05)
            assert set(_received(broker)) == _ivorns(user, mine)
            assert vtp.list_receivers(redis_client, user)[0].last_error == ""
    finally:
        stop.set()
        worker.join(timeout=10)
    assert not worker.is_alive()


def _scripted_broker(answers: list[bytes], seen: list[bytes]) -> tuple[int, threading.Thread]:
    """A one-connection VTP peer on loopback that reads the event, then sends ``answers`` in
    turn, reading one reply after each ``iamalive`` (Comet's own transport messages)."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn, server:
            seen.append(vtp._read_message(conn))
            for answer in answers:
                conn.sendall(vtp.frame_message(answer))
                if b'role="iamalive"' in answer:
                    seen.append(vtp._read_message(conn))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server.getsockname()[1], thread


def test_iamalive_is_answered_and_a_nak_reason_is_returned() -> None:
    """An iamalive arriving while the author waits gets a schema-valid iamalive response naming
    us; then an ack, or a nak with its reason, ends the exchange."""
    from comet.protocol.messages import ack, iamalive, nak

    packet_ivorn = "ivo://minibroker.test/u/f#1"
    for final, expected in (
        (ack(LOCAL_IVO, packet_ivorn), vtp.Reply(vtp.Verdict.ACK)),
        (
            nak(LOCAL_IVO, packet_ivorn, "Event rejected: test"),
            vtp.Reply(vtp.Verdict.NAK, "Event rejected: test"),
        ),
    ):
        seen: list[bytes] = []
        port, thread = _scripted_broker([iamalive(LOCAL_IVO).raw_bytes, final.raw_bytes], seen)
        reply = vtp.send_packet(
            vtp.Receiver("127.0.0.1", port),
            b"<VOEvent/>",
            author_ivorn=SETTINGS.author_ivorn,
            timeout_s=5,
            allow_private=True,
        )
        thread.join(timeout=5)
        assert reply == expected
        assert seen[0] == b"<VOEvent/>"
        response = etree.fromstring(seen[1])
        assert TRANSPORT.validate(response), TRANSPORT.error_log
        assert (
            response.get("role"),
            response.findtext("Origin"),
            response.findtext("Response"),
        ) == ("iamalive", LOCAL_IVO, SETTINGS.author_ivorn)


def test_a_peer_that_is_not_vtp_is_reported() -> None:
    """A port that answers with something other than VTP (here an HTTP reply) raises a
    DeliveryError naming the broker, instead of hanging or crashing the forwarder."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        with conn, server:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    with pytest.raises(
        DeliveryError, match=f"VTP broker 127.0.0.1:{port}: .*is this port a VTP broker"
    ):
        vtp.send_packet(
            vtp.Receiver("127.0.0.1", port),
            b"<VOEvent/>",
            author_ivorn="ivo://x/y",
            timeout_s=5,
            allow_private=True,
        )


def test_cli_adds_lists_forwards_and_removes(
    redis_url, redis_client, two_users, comet, capsys, tmp_path
) -> None:
    """``minibroker vtp add|list|forward|remove`` do what they say, naming packets with the
    configured authority; a bad receiver is a one-line error with exit 1."""
    user, mine, _, _ = two_users
    where = f"127.0.0.1:{comet.port}"
    config = tmp_path / "minibroker.toml"
    config.write_text('vo_authority = "minibroker.test"\nvtp_allow_private = true\n')
    common = ["--redis-url", redis_url, "--user", user]

    def main(argv: list[str]) -> int:
        return cli_main(["--config", str(config), *argv])

    assert main(["vtp", "add", where, "--since", "0", *common]) == 0
    assert f"go to {where}" in capsys.readouterr().out
    assert main(["vtp", "forward", "--exit-when-idle", *common]) == 0
    assert set(_received(comet)) == _ivorns(user, mine)
    assert main(["vtp", "list", *common]) == 0
    assert (
        f"{where}  position {_last(redis_client, user)}  acked 64  nakked 0"
        in capsys.readouterr().out
    )
    assert main(["vtp", "remove", where, *common]) == 0
    assert vtp.list_receivers(redis_client, user) == []
    assert main(["vtp", "remove", where, *common]) == 1
    assert main(["vtp", "add", "nohostport", *common]) == 1
    assert "give HOST:PORT" in capsys.readouterr().err


def test_private_addresses_are_refused_unless_the_operator_allows_them() -> None:
    """A receiver on loopback or a private network is refused by default (users pick the host:
    they must not aim the service at its own network); nothing is sent."""
    for host in ("127.0.0.1", "10.1.2.3", "169.254.169.254", "localhost"):
        with pytest.raises(DeliveryError, match="is not a public address.*vtp_allow_private"):
            vtp.send_packet(vtp.Receiver(host, 8098), b"<VOEvent/>", author_ivorn="ivo://x/y")


def test_receiver_addresses_parse() -> None:
    """HOST:PORT and [IPv6]:PORT parse; anything else says what to give."""
    assert vtp.Receiver.parse("vo.example.org:8098") == vtp.Receiver("vo.example.org", 8098)
    assert str(vtp.Receiver.parse("[::1]:8098")) == "[::1]:8098"
    for bad in ("vo.example.org", ":8098", "host:0", "host:http"):
        with pytest.raises(ConfigError, match="HOST:PORT"):
            vtp.Receiver.parse(bad)
