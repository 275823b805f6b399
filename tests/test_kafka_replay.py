"""Replay: a past window of the topic, found through the visit index that serve writes, is
re-evaluated into one user's stream without duplicating what was already delivered."""

from __future__ import annotations

import shutil
from pathlib import Path

from kafka_fixtures import delete_keys, filter_dir, live_config, reference_matches, stream_matches

from engine.service.produce import produce_night
from engine.service.replay import replay
from engine.service.serve import ServeSettings, serve
from engine.service.visitindex import lookup
from engine.sinks.streams import stream_key
from engine.sources.kafka import KafkaSettings

SAMPLES = Path(__file__).resolve().parents[1] / "sample_filters"


def test_replay_adds_only_what_is_new(
    kafka_bootstrap, kafka_names, redis_client, unique_user, small_night, tmp_path
) -> None:
    """Replaying served visits writes nothing twice; a filter added later gets exactly the
    matches of the visits in the window (by the index), as an offline run of it gives them; a
    new version of a filter re-delivers, its entries naming the new version."""
    user, ref = f"{unique_user}l", f"{unique_user}r"
    live_dir = filter_dir(tmp_path / "live", user)
    config = live_config()
    try:
        produced = produce_night(
            small_night, kafka_bootstrap, kafka_names.topic, partitions=3, progress=False
        )
        settings = ServeSettings(
            KafkaSettings(kafka_bootstrap, kafka_names.topic, kafka_names.group, linger_s=0.5),
            live_dir,
        )
        serve(settings, config, redis_client, idle_exit_s=2.0, handle_signals=False)
        served = stream_matches(redis_client, user)
        spans = lookup(redis_client, kafka_names.topic, 0)
        assert [s.visit for s in spans] == produced.visits

        again = replay(
            redis_client,
            kafka_bootstrap,
            kafka_names.topic,
            user=user,
            filters=live_dir,
            since=0,
            config=config,
        )
        assert (again.visits, again.alerts, again.published) == (3, produced.alerts, 0)
        assert stream_matches(redis_client, user) == served

        # A new filter, replayed over the last two visits only (the window starts at the 2nd's
        # observation time).
        shutil.copy(SAMPLES / "young_transients.py", live_dir / user / "young_transients.py")
        new = replay(
            redis_client,
            kafka_bootstrap,
            kafka_names.topic,
            user=user,
            filters=live_dir,
            filter_name="young_transients",
            since=spans[1].time,
            config=config,
        )
        assert new.visits == 2
        ref_dir = tmp_path / "ref"
        (ref_dir / ref).mkdir(parents=True)
        shutil.copy(SAMPLES / "young_transients.py", ref_dir / ref / "young_transients.py")
        expected = reference_matches(redis_client, small_night, ref_dir, ref)
        for key in _visit_matches(redis_client, ref, spans[0].visit):
            del expected[key]  # the first visit lies before the window
        got = stream_matches(redis_client, user) - served
        assert got == expected and new.published == sum(got.values()) > 0

        # A new version of a filter delivers again what it passes, and says which version it is.
        path = live_dir / user / "random_sample.py"
        path.write_text(path.read_text() + "\n# version 2\n")
        before = {i for i, _f in redis_client.xrange(stream_key(user))}
        again = replay(
            redis_client,
            kafka_bootstrap,
            kafka_names.topic,
            user=user,
            filters=live_dir,
            filter_name="random_sample",
            since=0,
            config=config,
        )
        redelivered = [
            f
            for i, f in redis_client.xrange(stream_key(user))
            if i not in before and f.get(b"kind") == b"match"
        ]
        old = {(k[1]) for k in served if k[0] == "random_sample"}
        assert again.published == len(redelivered) == len(old) > 0
        assert {int(f[b"diaSourceId"]) for f in redelivered} == old
        assert len({f[b"filter_version"] for f in redelivered}) == 1
        assert redelivered[0][b"filter_version"] not in {
            f[b"filter_version"]
            for i, f in redis_client.xrange(stream_key(user))
            if i in before and f.get(b"filter") == b"random_sample" and f.get(b"kind") == b"match"
        }
    finally:
        delete_keys(redis_client, user, ref, kafka_names.topic)


def _visit_matches(client, user: str, visit: int) -> set[tuple[str, int]]:  # type: ignore[no-untyped-def]
    return {
        (f[b"filter"].decode(), int(f[b"diaSourceId"]))
        for _i, f in client.xrange(stream_key(user))
        if f.get(b"kind") == b"match" and int(f[b"visit"]) == visit
    }
