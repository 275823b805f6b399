"""What several verbs share: connecting to Redis with an error that says what to do."""

from __future__ import annotations

import redis

from engine.config import DEFAULT_REDIS_URL
from engine.errors import ConfigError

__all__ = ["connect_redis"]


def connect_redis(url: str | None) -> redis.Redis:
    """A client of the server at ``url`` (default: the configured one), checked with PING."""
    url = url or DEFAULT_REDIS_URL
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3)
        client.ping()
    except (redis.RedisError, ValueError) as exc:
        raise ConfigError(
            f"cannot reach Redis at {url} ({exc}); start one, set REDIS_URL, or try `minibroker demo`"
        ) from None
    return client
