"""Several engines and crashes: engines in one consumer group split the partitions, and killing
them with SIGKILL at random points never loses or duplicates a match."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from kafka_fixtures import (
    committed,
    delete_keys,
    filter_dir,
    reference_matches,
    serve_command,
    serve_env,
    stream_matches,
)

from engine.service.produce import ensure_topic, produce_night

PARTITIONS = 4


class _Engine:
    """One ``minibroker serve`` subprocess, its stderr in a file."""

    def __init__(self, cmd: list[str], log: Path):
        self.cmd, self.log = cmd, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.mark = len(self.text()) if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.cmd, stdout=subprocess.DEVNULL, stderr=out, env=serve_env()
            )

    def wait_for_visit(self, timeout_s: float) -> bool:
        """Wait until this run of the engine logs a processed visit; False after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if '"event": "visit"' in self.text()[self.mark :]:
                return True
            time.sleep(0.05)
        return False

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        assert self.proc is not None
        # SIGTERM drains once serve has its handler (it logs "serving" then); before that the
        # default action would end it with -15, which is not what this test is about.
        deadline = time.monotonic() + 30
        while (
            "serving" not in self.text()[self.mark :]
            and self.proc.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture()
def trees(tmp_path: Path, redis_client, unique_user: str, kafka_names):  # type: ignore[no-untyped-def]
    """Filter trees for the engines (``live``) and the clean offline run (``ref``)."""
    live, ref = f"{unique_user}l", f"{unique_user}r"
    yield live, ref, filter_dir(tmp_path / "live", live), filter_dir(tmp_path / "ref", ref)
    delete_keys(redis_client, live, ref, kafka_names.topic)


def _wait_committed(
    bootstrap: str,
    names,
    want: dict[int, int],
    engines: list[_Engine],  # type: ignore[no-untyped-def]
    timeout_s: float,
) -> None:
    deadline = time.monotonic() + timeout_s
    while committed(bootstrap, names.topic, names.group, PARTITIONS) != want:
        assert time.monotonic() < deadline, (
            "the engines did not commit every offset in time:\n"
            + "\n".join(e.text()[-2000:] for e in engines)
        )
        time.sleep(0.5)


def test_two_engines_in_one_group_split_the_partitions(
    kafka_bootstrap, kafka_names, redis_url, redis_client, trees, small_night, tmp_path
) -> None:
    """Two engines in one group each take part of the partitions and process visits; together
    they deliver exactly what one offline run delivers."""
    live, ref, live_dir, ref_dir = trees
    ensure_topic(kafka_bootstrap, kafka_names.topic, PARTITIONS)
    cmd = serve_command(kafka_bootstrap, kafka_names.topic, kafka_names.group, live_dir, redis_url)
    engines = [_Engine(cmd, tmp_path / f"engine{i}.log") for i in range(2)]
    try:
        deadline = time.monotonic() + 30
        while not all(e.text().count("assigned partitions") for e in engines) or any(
            "assigned partitions [0, 1, 2, 3]" in e.text().splitlines()[-1] for e in engines
        ):
            assert time.monotonic() < deadline, "the engines did not both join the group"
            time.sleep(0.2)
        produced = produce_night(
            small_night, kafka_bootstrap, kafka_names.topic, partitions=PARTITIONS, progress=False
        )
        _wait_committed(kafka_bootstrap, kafka_names, produced.per_partition, engines, 60)
    finally:
        codes = [e.stop() for e in engines]
    assert codes == [0, 0]
    assert all('"event": "visit"' in e.text() for e in engines), "one engine processed nothing"
    assert stream_matches(redis_client, live) == reference_matches(
        redis_client, small_night, ref_dir, ref
    )


def test_kill_9_at_random_points_loses_and_duplicates_nothing(
    kafka_bootstrap, kafka_names, redis_url, redis_client, trees, tmp_path
) -> None:
    """Two engines in one group, SIGKILLed and restarted at random moments (mid-visit,
    mid-publish, between publish and commit) while a night streams in: every user stream ends up
    with each match of a clean run exactly once."""
    from engine.local.simulate import simulate_night

    live, ref, live_dir, ref_dir = trees
    night = simulate_night(
        tmp_path / "night.avro", visits=12, alerts_per_visit=60, seed=7, progress=False
    ).path
    ensure_topic(kafka_bootstrap, kafka_names.topic, PARTITIONS)
    seed = int(os.environ.get("MINIBROKER_FAULT_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    cmd = serve_command(
        kafka_bootstrap,
        kafka_names.topic,
        kafka_names.group,
        live_dir,
        redis_url,
        "-X",
        "session.timeout.ms=3000",
        "-X",
        "heartbeat.interval.ms=200",
    )
    engines = [_Engine(cmd, tmp_path / f"engine{i}.log") for i in range(2)]
    produced: list[object] = []
    producer = threading.Thread(
        target=lambda: produced.append(
            produce_night(
                night,
                kafka_bootstrap,
                kafka_names.topic,
                partitions=PARTITIONS,
                visits_per_minute=60,
                progress=False,
            )
        )
    )
    kills = 0
    try:
        producer.start()
        while producer.is_alive() or kills < 4:
            # Kill an engine while it works: soon after it published a visit (so mid-visit,
            # mid-publish or between publish and commit of the next), never while it starts.
            victim = engines[rng.randrange(2)]
            victim.wait_for_visit(timeout_s=8.0)
            time.sleep(rng.uniform(0.0, 0.3))
            victim.kill9()
            kills += 1
            victim.start()
        producer.join()
        report = produced[0]
        _wait_committed(kafka_bootstrap, kafka_names, report.per_partition, engines, 90)  # type: ignore[attr-defined]
    finally:
        codes = [e.stop() for e in engines]
    assert codes == [0, 0], f"seed {seed}"
    expected = reference_matches(redis_client, night, ref_dir, ref)
    got = stream_matches(redis_client, live)
    assert sum(expected.values()) > 50
    assert kills >= 4
    assert got == expected, (
        f"seed {seed}: {kills} kills; missing {expected - got}, extra {got - expected}"
    )


def test_an_unreachable_broker_is_said_once_not_per_retry(caplog) -> None:
    """A broker that is down gets one clear log line (address, error, what to do) while
    librdkafka keeps retrying, not a line per connection attempt."""
    import logging

    from engine.local.ports import free_port
    from engine.sources.kafka import KafkaSettings, KafkaSource

    port = free_port()  # nobody listens on it
    caplog.set_level(logging.WARNING, logger="engine.sources.kafka")
    source = KafkaSource(KafkaSettings(f"127.0.0.1:{port}", "t", "g"), lambda letter: None)
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            source.poll(0.2)
    finally:
        source.close()
    lines = [r.getMessage() for r in caplog.records if "kafka_error" in r.getMessage()]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "retrying" in lines[0]


def test_produce_to_an_unreachable_broker_is_one_error_line(small_night, capfd) -> None:
    """`produce` with no broker listening exits 1 with one line naming the address and the fix,
    and librdkafka writes nothing of its own."""
    from engine.cli import main
    from engine.local.ports import free_port

    port = free_port()
    code = main(
        ["produce", "--night", str(small_night), "--bootstrap", f"127.0.0.1:{port}", "--topic", "t"]
    )
    err = capfd.readouterr().err
    assert code == 1
    assert f"cannot reach the Kafka broker at 127.0.0.1:{port}" in err and "--bootstrap" in err
    assert "rdkafka" not in err
