"""docs/API.md cannot drift from the code: every route, error code and failure reason is in it."""

from __future__ import annotations

import re
from pathlib import Path

import api.errors
from api.app import create_app
from shared.settings import Settings
from shared.states import FailureReason

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = (ROOT / "docs" / "API.md").read_text()
# `code="..."` in a raise, and the codes an upload's worker answers with (worker/uploads.py).
EXPLICIT_CODE = re.compile(r"""\b(?:error_)?code\s*=\s*["']([a-z_]+)["']""")


def documented_codes() -> set[str]:
    """The codes the reference's error table lists."""
    return set(re.findall(r"^\| \d{3} \| `([a-z_]+)` \|", REFERENCE, flags=re.MULTILINE))


def codes_in_the_code() -> set[str]:
    """Every error code the api can answer: the error classes', and each one set explicitly."""
    codes: set[str] = {api.errors.ApiError.code}
    pending = [api.errors.ApiError]
    while pending:
        for subclass in pending.pop().__subclasses__():
            codes.add(subclass.code)
            pending.append(subclass)
    codes.update(api.errors._HTTP_CODES.values())
    for path in [*(ROOT / "api").glob("*.py"), ROOT / "worker" / "uploads.py"]:
        codes.update(EXPLICIT_CODE.findall(path.read_text()))
    return codes


def test_every_error_code_of_the_code_is_in_the_reference() -> None:
    """A code raised anywhere in the api (or answered for an upload) has a row with its status."""
    missing = codes_in_the_code() - documented_codes()
    assert not missing, f"add to docs/API.md's error table: {sorted(missing)}"


def test_each_documented_status_is_the_codes_own() -> None:
    """The status next to a class's code in the table is the one it answers with."""
    rows = dict(
        (code, int(status))
        for status, code in re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", REFERENCE, flags=re.MULTILINE)
    )
    pending = [api.errors.ApiError]
    while pending:
        for subclass in pending.pop().__subclasses__():
            assert rows.get(subclass.code) == subclass.status, subclass.__name__
            pending.append(subclass)


def test_every_failure_reason_is_in_the_reference() -> None:
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", REFERENCE, flags=re.MULTILINE))
    missing = {reason.value for reason in FailureReason} - documented
    assert not missing, f"add to docs/API.md's failure reasons: {sorted(missing)}"


def test_every_route_is_in_the_reference() -> None:
    """Each method and path the app serves (HEAD aside) is named in the reference."""
    app = create_app(Settings(_env_file=None))
    missing = sorted(
        f"{route.method} {route.resource.canonical}"
        for route in app.router.routes()
        if route.method != "HEAD"
        and route.resource is not None
        and f"{route.method} {route.resource.canonical}" not in REFERENCE
    )
    assert not missing, f"add to docs/API.md: {missing}"


def test_the_readme_links_the_reference() -> None:
    assert "(docs/API.md)" in (ROOT / "README.md").read_text()
