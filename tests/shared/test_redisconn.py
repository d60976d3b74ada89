"""Connecting to Redis: how its address is shown."""

from __future__ import annotations

import pytest

from shared.redisconn import redacted_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("rediss://app:s3cret@redis.example:6380/1", "rediss://app:***@redis.example:6380/1"),
        ("redis://app:p@ss@word@redis:6379", "redis://app:***@redis:6379"),
        ("redis://redis:6379/0?password=s3cret&db=2", "redis://redis:6379/0?password=***&db=2"),
    ],
)
def test_redacted_url_hides_the_password_and_keeps_the_rest(url: str, shown: str) -> None:
    """User, host, port, database and options stay readable; the password never appears."""
    assert redacted_url(url) == shown
    assert "s3cret" not in redacted_url(url)
