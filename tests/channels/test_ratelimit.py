"""Token buckets: in-process and shared through Redis, checked by counting timestamps."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis

from tidings.channels.ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter, window_max

RATE, BURST, SECONDS = 40.0, 4.0, 1.0


def hammer(limiters: list[RateLimiter], key: str, *, threads_each: int = 2) -> list[float]:
    """Every limiter's threads take tokens as fast as they can for SECONDS; the take times."""
    stamps: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + SECONDS

    def worker(limiter: RateLimiter) -> None:
        while True:
            limiter.acquire(key)
            now = time.monotonic()
            if now >= deadline:
                return
            with lock:
                stamps.append(now)

    workers = [
        threading.Thread(target=worker, args=(limiter,))
        for limiter in limiters
        for _ in range(threads_each)
    ]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return stamps


def assert_within_rate(stamps: list[float]) -> None:
    # a bucket allows at most BURST + RATE * w in any window of w seconds
    for window in (0.1, 0.25, 0.5):
        assert window_max(stamps, window) <= BURST + RATE * window + 1, window
    assert len(stamps) <= BURST + RATE * SECONDS + 1
    assert len(stamps) >= 0.7 * RATE * SECONDS  # and it is not simply blocking everything


def test_local_bucket_holds_the_rate_across_threads() -> None:
    limiter = LocalRateLimiter({"twilio": RATE}, burst={"twilio": BURST})
    assert_within_rate(hammer([limiter], "twilio:+15005550006", threads_each=4))


@pytest.mark.redis
def test_redis_bucket_is_shared_by_separate_clients(redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    limiters: list[RateLimiter] = [
        RedisRateLimiter(
            {"twilio": RATE},
            redis.Redis.from_url(redis_url),
            prefix=prefix,
            burst={"twilio": BURST},
        )
        for _ in range(2)
    ]
    stamps = hammer(limiters, "twilio:+15005550006")

    assert_within_rate(stamps)
    # each client alone would allow the full rate: together they still stay under it
    client = redis.Redis.from_url(redis_url)
    assert client.exists(f"{prefix}twilio:+15005550006") == 1
    ttl: int = client.pttl(f"{prefix}twilio:+15005550006")  # type: ignore[assignment]
    assert ttl > 0  # idle buckets expire


def test_keys_without_a_rate_are_not_limited_and_exact_keys_win() -> None:
    limiter = LocalRateLimiter({"twilio": 1, "twilio:+15005550006": 100})
    assert limiter.limits("sendgrid:news@shop.example") is None
    assert limiter.limits("twilio:+15005550006") == (100, 100)
    assert limiter.limits("twilio:+15005550007") == (1, 1.0)
    assert limiter.try_acquire("twilio:+15005550007") == 0.0
    assert 0 < limiter.try_acquire("twilio:+15005550007") <= 1.0


def test_a_bad_rate_names_the_setting() -> None:
    with pytest.raises(ValueError, match=r"TIDINGS_RATE_LIMITS\['twilio'\]"):
        LocalRateLimiter({"twilio": 0})
