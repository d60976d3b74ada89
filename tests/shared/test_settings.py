"""Settings refuse, where they enter, what would only fail later: in the worker, or in a header."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.settings import AccountConfig, Settings

ROOT = Path(__file__).resolve().parents[2]
COOKIE = "access_token=settings-secret-cookie"


@pytest.mark.parametrize(
    "cookie",
    [f"{COOKIE}\r\nX-Injected: 1", f"{COOKIE}\nX: 1", f"{COOKIE}\x00", f"{COOKIE}\x7f", f"{COOKIE}é", "  "],
)
def test_a_cookie_that_is_not_one_printable_line_is_refused(cookie: str) -> None:
    """CR, LF, NUL, DEL, non-ASCII or nothing at all: refused, and the error never shows the value."""
    with pytest.raises(ValidationError) as refused:
        AccountConfig(name="a", cookie=cookie)
    shown = refused.value.errors(include_input=False)
    assert "settings-secret-cookie" not in repr(shown)


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "javascript:alert(1)", "ftp://luma.example", "https://", "http://a b", "luma"],
)
def test_a_base_url_must_be_http_or_https_with_a_host(url: str) -> None:
    """Only http(s) URLs with a host, where a worker may send an account's cookie."""
    with pytest.raises(ValidationError):
        AccountConfig(name="a", cookie=COOKIE, base_url=url)
    with pytest.raises(ValidationError):
        Settings(_env_file=None, luma_base_url=url)


def test_a_good_account_passes_as_it_is_and_a_pasted_newline_is_trimmed() -> None:
    """A normal cookie and URL are taken unchanged; the newline a paste leaves at the end is dropped."""
    config = AccountConfig(name="a", cookie=COOKIE + "\n", base_url="http://127.0.0.1:8100")
    assert (config.cookie, config.base_url) == (COOKIE, "http://127.0.0.1:8100")


def test_the_in_flight_upload_cap_must_hold_one_upload() -> None:
    """UPLOAD_MAX_INFLIGHT_BYTES below UPLOAD_MAX_BYTES would refuse every upload: a setting error."""
    with pytest.raises(ValidationError):
        Settings(_env_file=None, upload_max_bytes=1000, upload_max_inflight_bytes=999)


def test_a_bad_account_in_the_environment_is_reported_without_its_cookie(tmp_path: Path) -> None:
    """`luma-queue api` with a CR/LF cookie in LUMA_ACCOUNTS names the field, not the cookie."""
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "api"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "LUMA_ACCOUNTS": f'[{{"name": "a", "cookie": "{COOKIE}\\r\\nX: 1"}}]'},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert "LUMA_ACCOUNTS[0].cookie" in result.stderr
    assert "settings-secret-cookie" not in result.stderr
