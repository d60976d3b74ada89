"""Pure helpers of worker/upstream/web.py: cookies, error details, Retry-After, backoff."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from shared.cookies import merge_set_cookie, normalize_cookie
from worker.upstream.errors import AccountExpired, UsageExhausted
from worker.upstream.web import (
    GenerationNotFound,
    RateLimited,
    RetryPolicy,
    UpstreamRejected,
    UpstreamUnavailable,
    _error_class,
    error_message,
    parse_retry_after,
)

NOW = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
PAST = "Wed, 21 Oct 2015 07:28:00 GMT"
FUTURE = "Fri, 01 Jan 2100 00:00:00 GMT"


# --- normalize_cookie ---------------------------------------------------------------------------


def test_bare_token_becomes_access_token() -> None:
    """A value without `=` is an access token."""
    assert normalize_cookie("  eyJhbGciOi.abc.def \n") == "access_token=eyJhbGciOi.abc.def"


def test_cookie_string_is_kept_and_tidied() -> None:
    """A whole cookie string keeps every pair, in order, with uniform separators."""
    raw = "access_token=a1;refresh_token=r1 ;  luma_session=s=1;"
    assert normalize_cookie(raw) == "access_token=a1; refresh_token=r1; luma_session=s=1"


def test_pasted_cookie_header_prefix_is_dropped() -> None:
    """An operator pasting `Cookie: ...` from devtools gets the value only."""
    assert normalize_cookie("Cookie: access_token=a1") == "access_token=a1"


@pytest.mark.parametrize("raw", ["", "   ", "Cookie:", "a=1\r\nX-Evil: 1"])
def test_unusable_cookie_is_refused(raw: str) -> None:
    """An empty or multi-line cookie is a configuration error."""
    with pytest.raises(ValueError):
        normalize_cookie(raw)


# --- merge_set_cookie ---------------------------------------------------------------------------


def test_set_cookie_replaces_in_place() -> None:
    """A rotated cookie keeps its position and ignores attributes."""
    merged = merge_set_cookie(
        "access_token=old; refresh_token=r1",
        ["access_token=new; Path=/; HttpOnly; Secure; SameSite=Lax; Domain=.lumalabs.ai"],
        now=NOW,
    )
    assert merged == "access_token=new; refresh_token=r1"


def test_set_cookie_appends_new_names() -> None:
    """A cookie the account did not have yet is appended."""
    merged = merge_set_cookie("access_token=a1", ["luma_session=s1; Path=/", "other=o1"], now=NOW)
    assert merged == "access_token=a1; luma_session=s1; other=o1"


def test_set_cookie_last_header_wins() -> None:
    """Two headers for one name in one response: the later one counts."""
    merged = merge_set_cookie("access_token=a1", ["access_token=a2", "access_token=a3"], now=NOW)
    assert merged == "access_token=a3"


@pytest.mark.parametrize(
    "header",
    [
        "refresh_token=; Path=/",
        "refresh_token=r2; Max-Age=0",
        "refresh_token=r2; max-age=-1",
        f"refresh_token=r2; Expires={PAST}",
        "refresh_token=r2; Expires=Wed, 21-Oct-2015 07:28:00 GMT",
    ],
)
def test_set_cookie_deletions_drop_the_cookie(header: str) -> None:
    """An empty value, Max-Age<=0 or a past Expires removes the cookie."""
    assert merge_set_cookie("access_token=a1; refresh_token=r1", [header], now=NOW) == "access_token=a1"


def test_max_age_wins_over_expires() -> None:
    """A positive Max-Age keeps a cookie whose Expires is in the past (RFC 6265)."""
    header = f"refresh_token=r2; Expires={PAST}; Max-Age=3600"
    assert merge_set_cookie("refresh_token=r1", [header], now=NOW) == "refresh_token=r2"


def test_future_expires_keeps_the_cookie() -> None:
    """A future Expires is an ordinary rotation."""
    assert merge_set_cookie("a=1", [f"a=2; Expires={FUTURE}"], now=NOW) == "a=2"


def test_deleting_an_unknown_cookie_changes_nothing() -> None:
    """Deleting a name the account never had is a no-op."""
    assert merge_set_cookie("a=1", ["b=; Max-Age=0"], now=NOW) == "a=1"


def test_unparsable_set_cookie_is_ignored() -> None:
    """Headers without a name=value pair are skipped."""
    assert merge_set_cookie("a=1", ["garbage", "=nameless", ""], now=NOW) == "a=1"


def test_values_with_equals_signs_survive() -> None:
    """Base64 padding inside a value is not a separator."""
    assert merge_set_cookie("a=x==", ["b=y=="], now=NOW) == "a=x==; b=y=="


# --- error details and classification -------------------------------------------------------------


def test_error_message_from_a_string_detail() -> None:
    """`{"detail": "Not authenticated"}` reads as its string."""
    assert error_message("Not authenticated") == "Not authenticated"


def test_error_message_from_a_reason_detail() -> None:
    """`{"detail": {"reason": ...}}` reads as the reason."""
    assert error_message({"reason": "Maximum usage limit exceeded"}) == "Maximum usage limit exceeded"


def test_error_message_from_a_validation_list() -> None:
    """FastAPI validation errors read as `loc: msg` joined by semicolons."""
    detail = [
        {"loc": ["body", "user_prompt"], "msg": "field required", "type": "value_error.missing"},
        {"loc": ["query", "limit"], "msg": "not an int", "type": "type_error"},
    ]
    assert error_message(detail) == "body.user_prompt: field required; query.limit: not an int"


def test_error_message_from_an_unknown_object() -> None:
    """An object without a known key is rendered as JSON rather than lost."""
    assert error_message({"code": 7}) == '{"code": 7}'
    assert error_message(None) == ""


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (401, "Not authenticated", AccountExpired),
        (401, "Maximum usage limit exceeded", AccountExpired),
        (402, "Payment required", UsageExhausted),
        (400, "Maximum usage limit exceeded", UsageExhausted),
        (403, "Monthly limit reached", UsageExhausted),
        (400, "quota exceeded", UsageExhausted),
        (403, "Forbidden", UpstreamRejected),
        (429, "Too many requests", RateLimited),
        (429, "Maximum usage limit exceeded", UsageExhausted),
        (404, "Not found", GenerationNotFound),
        (422, "body.user_prompt: field required", UpstreamRejected),
        (405, "Method Not Allowed", UpstreamRejected),
        (500, "Internal Server Error", UpstreamUnavailable),
        (503, "", UpstreamUnavailable),
        (302, "", UpstreamUnavailable),
    ],
)
def test_status_and_detail_pick_the_error_class(status: int, message: str, expected: type) -> None:
    """Each status (and "limit"/"exceeded" wording) maps to the documented error class."""
    assert _error_class(status, message, not_found=GenerationNotFound) is expected


# --- Retry-After ----------------------------------------------------------------------------------


def test_retry_after_in_seconds() -> None:
    """Delta-seconds, integer or not, are taken as is."""
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5


def test_retry_after_as_http_date() -> None:
    """An HTTP date is turned into seconds from now."""
    when = datetime.fromtimestamp(NOW + 30, tz=UTC)
    assert parse_retry_after(format_datetime(when, usegmt=True), now=NOW) == pytest.approx(30.0)


def test_retry_after_in_the_past_is_zero() -> None:
    """A date already gone or a negative delta means retry now."""
    assert parse_retry_after(PAST, now=NOW) == 0.0
    assert parse_retry_after("-5") == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "nan", "inf"])
def test_unusable_retry_after_is_none(value: str | None) -> None:
    """Anything unparsable falls back to the caller's own backoff."""
    assert parse_retry_after(value) is None


# --- RetryPolicy ----------------------------------------------------------------------------------


def test_backoff_is_full_jitter_capped_by_max_delay() -> None:
    """Delays stay within [0, min(max_delay, base * 2**(n-1))]."""
    policy = RetryPolicy(base_delay=1.0, max_delay=5.0)
    for failures, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (200, 5.0)]:
        delays = [policy.backoff(failures) for _ in range(200)]
        assert all(0.0 <= delay <= ceiling for delay in delays)


def test_rate_limit_delay_follows_retry_after_within_max_delay() -> None:
    """A 429's Retry-After is the delay, bounded by max_delay."""
    policy = RetryPolicy(max_delay=10.0)
    assert policy.delay_after(RateLimited("429", retry_after=3.0), 1) == 3.0
    assert policy.delay_after(RateLimited("429", retry_after=300.0), 1) == 10.0
    assert 0.0 <= policy.delay_after(RateLimited("429"), 1) <= policy.base_delay


def test_policy_rejects_nonsense() -> None:
    """Zero attempts or negative delays are configuration errors."""
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_delay=-1)
