"""Where a process's time went, from the raw collapsed stacks of `py-spy record --format raw`.

Each line of such a file is `process N:"cmd";outer (file);...;inner (file) COUNT`. A function's
*self* share is the samples in which it was the innermost frame (time in C code it called counts
as its own); its *inclusive* share is the samples with it anywhere on the stack. Packages group
frames by file, so that "redis-py 40 %" reads as: 40 % of the samples were inside redis-py.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

PROJECT_PREFIXES = ("api/", "shared/", "worker/", "simulator/", "cli/")
# Frames on (nearly) every stack of the api: their inclusive share says nothing.
EVERYWHERE_FILES = ("cli/",)
# Packages that wrap every request (the server, the loop, the handlers): inclusive is "all of it".
WRAPPERS = {"aiohttp", "asyncio event loop", "luma-queue api/", "cli", "<frozen runpy>"}
PACKAGES = (
    ("api/", "luma-queue api/"),
    ("shared/", "luma-queue shared/"),
    ("redis/", "redis-py"),
    ("hiredis", "redis-py"),
    ("aiohttp/", "aiohttp"),
    ("multidict/", "aiohttp"),
    ("yarl/", "aiohttp"),
    ("asyncio/", "asyncio event loop"),
    ("selectors.py", "asyncio event loop"),
    ("json/", "json (stdlib)"),
    ("pydantic", "pydantic"),
    ("structlog/", "logging (structlog, logging)"),
    ("logging/", "logging (structlog, logging)"),
)
TOP = 12


def _frame(text: str) -> tuple[str, str]:
    """`Name.method (path/file.py)` -> (name, file)."""
    name, _, rest = text.rpartition(" (")
    if not name:
        return text, ""
    return name, rest.rstrip(")")


def package(file: str) -> str:
    for prefix, name in PACKAGES:
        if file.startswith(prefix) or f"/{prefix}" in file:
            return name
    return file.split("/", 1)[0] if "/" in file else file or "(no Python frame)"


def summarize(path: Path) -> dict[str, Any]:
    total = 0
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    package_self: Counter[str] = Counter()
    package_inclusive: Counter[str] = Counter()
    idle = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(part) for part in stack.split(";") if not part.startswith("process ")]
        total += count
        if not frames:
            package_self["(no Python frame)"] += count
            continue
        leaf_name, leaf_file = frames[-1]
        if leaf_file == "selectors.py" and leaf_name.endswith("select"):
            idle += count  # waiting in epoll for the next event: the loop had nothing to run
        label = f"{leaf_name} ({leaf_file})"
        self_time[label] += count
        package_self[package(leaf_file)] += count
        for on_stack in {f"{name} ({file})" for name, file in frames}:
            inclusive[on_stack] += count
        for name in {package(file) for _, file in frames}:
            package_inclusive[name] += count

    def share(counts: Counter[str], keep: Any = None, top: int = TOP) -> list[tuple[str, float]]:
        chosen = [(name, n) for name, n in counts.most_common() if keep is None or keep(name)]
        return [(name, round(n / total, 3)) for name, n in chosen[:top]] if total else []

    def is_project(label: str) -> bool:
        _, file = _frame(label)
        # A frame on every sample (the function that runs the server) says nothing.
        return (
            file.startswith(PROJECT_PREFIXES)
            and not file.startswith(EVERYWHERE_FILES)
            and inclusive[label] < 0.99 * total
        )

    return {
        "samples": total,
        "idle": round(idle / total, 3) if total else 0.0,
        "self_by_package": share(package_self, top=20),
        "inclusive_by_package": share(package_inclusive, lambda name: name not in WRAPPERS, top=20),
        "self_top": share(self_time),
        "inclusive_project": share(inclusive, is_project, top=20),
    }


def render(endpoint: str, summary: dict[str, Any], path: Path) -> str:
    def rows(pairs: list[tuple[str, float]]) -> str:
        return "\n".join(f"      {value:6.1%}  {name}" for name, value in pairs)

    return "\n".join(
        [
            f"profile of the api under {endpoint} ({summary['samples']} samples, {path};"
            f" idle in epoll {summary['idle']:.1%},"
            f" {summary.get('rps_while_sampled', '?')} req/s while sampled)",
            "    self time by package:",
            rows(summary["self_by_package"]),
            "    inclusive by package (samples with a frame of it on the stack; not the server's own):",
            rows(summary["inclusive_by_package"]),
            "    inclusive, luma-queue's own functions:",
            rows(summary["inclusive_project"]),
            "    self time, top functions:",
            rows(summary["self_top"]),
        ]
    )
