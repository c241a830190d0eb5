"""Token buckets per (provider, sender): shared through Redis, or in-process without it.

A bucket refills at ``rate`` tokens per second up to ``capacity`` (default: one second's worth,
at least 1). ``acquire`` blocks until the tokens are taken. Keys look like ``twilio:+15005550006``;
the rate comes from ``TIDINGS_RATE_LIMITS``: the exact key first, then the provider alone.
Keys without a rate are not limited.

The Redis bucket is one Lua script (EVALSHA) that reads Redis ``TIME``, refills by the elapsed
time and takes the tokens atomically, so every process and machine shares one budget and clock.
While Redis cannot be reached (a restart), a limited key waits and tries again: nothing is sent
beyond the shared budget, and nothing fails.

>>> limiter = LocalRateLimiter({"twilio": 1000})
>>> limiter.try_acquire("twilio:+15005550006")
0.0
>>> limiter.acquire("sendgrid:news@shop.example")  # no rate configured: never waits
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tidings.config import Settings

log = logging.getLogger(__name__)
OUTAGE = 0.5  # seconds between tries while Redis cannot be reached

_LUA = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local requested = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= requested then
  tokens = tokens - requested
else
  wait = (requested - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
           'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return string.format('%.6f', wait)
"""


class RateLimiter(ABC):
    """Token buckets keyed by ``provider:sender``; the rate of each key from ``rates``."""

    def __init__(
        self,
        rates: Mapping[str, float],
        *,
        burst: Mapping[str, float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        for key, rate in rates.items():
            if rate <= 0:
                raise ValueError(f"TIDINGS_RATE_LIMITS[{key!r}] = {rate}: a rate must be > 0")
        self.rates = dict(rates)
        self.burst = dict(burst or {})
        self._sleep = sleep

    def limits(self, key: str) -> tuple[float, float] | None:
        """(rate, capacity) for ``key``, or None when it is not limited."""
        provider = key.split(":", 1)[0]
        for name in (key, provider):
            if name in self.rates:
                rate = self.rates[name]
                return rate, self.burst.get(name, max(1.0, rate))
        return None

    def try_acquire(self, key: str, tokens: int = 1) -> float:
        """Take ``tokens`` now and return 0.0, or take nothing and return seconds to wait."""
        limits = self.limits(key)
        if limits is None:
            return 0.0
        rate, capacity = limits
        if tokens > capacity:
            raise ValueError(f"{tokens} tokens can never fit bucket {key!r} of {capacity}")
        return self._take(key, rate, capacity, tokens)

    def acquire(self, key: str, tokens: int = 1) -> None:
        """Block until ``tokens`` are taken from the bucket ``key``."""
        while (wait := self.try_acquire(key, tokens)) > 0:
            self._sleep(wait)

    @abstractmethod
    def _take(self, key: str, rate: float, capacity: float, tokens: int) -> float: ...


class LocalRateLimiter(RateLimiter):
    """In-process buckets (thread-safe) for one machine without Redis."""

    def __init__(self, rates: Mapping[str, float], **kwargs: Any) -> None:
        super().__init__(rates, **kwargs)
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, float]] = {}

    def _take(self, key: str, rate: float, capacity: float, tokens: int) -> float:
        with self._lock:
            now = time.monotonic()
            level, then = self._state.get(key, (capacity, now))
            level = min(capacity, level + (now - then) * rate)
            if level >= tokens:
                self._state[key] = (level - tokens, now)
                return 0.0
            self._state[key] = (level, now)
            return (tokens - level) / rate


class RedisRateLimiter(RateLimiter):
    """Buckets in Redis shared by every worker: one atomic Lua script per take."""

    def __init__(
        self, rates: Mapping[str, float], client: Any, *, prefix: str = "tidings:rl:", **kwargs: Any
    ) -> None:
        super().__init__(rates, **kwargs)
        self.client = client
        self.prefix = prefix
        self._script = client.register_script(_LUA)

    @classmethod
    def from_url(cls, url: str, rates: Mapping[str, float], **kwargs: Any) -> RedisRateLimiter:
        import redis

        return cls(rates, redis.Redis.from_url(url), **kwargs)

    def _take(self, key: str, rate: float, capacity: float, tokens: int) -> float:
        import redis

        try:
            wait = float(self._script(keys=[self.prefix + key], args=[rate, capacity, tokens]))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # Redis away (a restart, a failover): the shared budget cannot be read, so nothing
            # is sent on this key until it is back; the send waits instead of failing.
            log.warning("rate limit %s: Redis unavailable (%s); waiting %.1f s", key, exc, OUTAGE)
            return OUTAGE
        # Redis TIME has microseconds; never spin on a wait rounded down to nothing.
        return 0.0 if wait <= 0 else max(wait, 1e-4)


def make_rate_limiter(settings: Settings) -> RateLimiter:
    """Redis buckets when ``TIDINGS_REDIS_URL`` is set, else in-process ones."""
    if settings.redis_url:
        return RedisRateLimiter.from_url(settings.redis_url, settings.rate_limits)
    return LocalRateLimiter(settings.rate_limits)


def window_max(timestamps: list[float], window: float) -> int:
    """The most timestamps that fall in any window of ``window`` seconds (for tests, benches)."""
    ordered = sorted(timestamps)
    best, start = 0, 0
    for end, stamp in enumerate(ordered):
        while stamp - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


__all__ = [
    "LocalRateLimiter",
    "RateLimiter",
    "RedisRateLimiter",
    "make_rate_limiter",
    "window_max",
]
