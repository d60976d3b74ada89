"""Fixtures shared by the whole suite live in tests/fixtures/, one module per resource."""

pytest_plugins = [
    "tests.fixtures.receiver",
    "tests.fixtures.redis",
    "tests.fixtures.api_process",
    "tests.fixtures.simulator",
    "tests.fixtures.stack",
    "tests.fixtures.browser",
]
