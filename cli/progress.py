"""How `luma-queue batch` tells a person where a batch stands.

Three reporters, one interface: on a terminal a live display (rich) with counts by state, the
pool's estimated time to finish and the current throughput; off a terminal (CI, a pipe) one plain
line per change, which a log keeps and grep can read; with --quiet nothing but the summary.
`Tally` works out the numbers all of them show.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

# The display's names for where a line stands, in the order they are shown.
COLUMNS = ("waiting", "processing", "completed", "failed", "downloaded")
THROUGHPUT_WINDOW_SECONDS = 60.0


@dataclass
class Tally:
    """Counts by state, and the timing the estimate is made from, for the lines of one run."""

    total: int
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COLUMNS, 0))
    # Each unfinished generation's own estimate of its wait, and when that estimate was read.
    waits: dict[str, tuple[float, float]] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)  # left our queue, as first seen
    render_seconds: list[float] = field(default_factory=list)
    finishes: deque[float] = field(default_factory=deque)
    began: float = field(default_factory=time.monotonic)

    def saw(self, gen_id: str, state: str | None, queue_position: object, wait: object) -> None:
        """A reading of one generation: keep what the estimate needs."""
        now = time.monotonic()
        if state == "pending" and queue_position is not None and isinstance(wait, int | float):
            self.waits[gen_id] = (float(wait), now)
            return
        self.waits.pop(gen_id, None)
        if state in ("pending", "processing"):
            self.started.setdefault(gen_id, now)
        elif state in ("completed", "failed"):
            start = self.started.pop(gen_id, None)
            if start is not None and state == "completed":
                self.render_seconds.append(now - start)
            self.finishes.append(now)

    def throughput_per_minute(self) -> float | None:
        now = time.monotonic()
        while self.finishes and self.finishes[0] < now - THROUGHPUT_WINDOW_SECONDS:
            self.finishes.popleft()
        window = min(THROUGHPUT_WINDOW_SECONDS, now - self.began)
        if window < 1.0 or not self.finishes:
            return None
        return len(self.finishes) * 60.0 / window

    def eta_seconds(self) -> float | None:
        """When the last unfinished line should end: the longest wait the gateway gave for the
        ones still in its queue plus a typical render, or what is left at the current throughput."""
        unfinished = self.counts["waiting"] + self.counts["processing"]
        if unfinished == 0:
            return 0.0 if sum(self.counts.values()) == self.total else None
        now = time.monotonic()
        render = statistics.median(self.render_seconds[-50:]) if self.render_seconds else None
        if render is None and self.waits:
            render = 0.0  # none rendered yet: the gateway's wait for the last one is what we know
        if render is not None and (self.waits or self.started):
            waits = [max(0.0, wait - (now - seen)) + render for wait, seen in self.waits.values()]
            runs = [max(0.0, render - (now - start)) for start in self.started.values()]
            return max(waits + runs)
        rate = self.throughput_per_minute()
        return unfinished * 60.0 / rate if rate else None


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def summary_counts(tally: Tally) -> str:
    return ", ".join(f"{tally.counts[name]} {name}" for name in COLUMNS)


class Reporter(Protocol):
    def note(self, text: str) -> None:
        """Something about the run as a whole: a chunk submitted, a wait for the gateway."""

    def line(self, number: int, text: str) -> None:
        """A change of one line: a new state, a video downloaded, a download that failed."""

    def refresh(self) -> None:
        """The counts changed."""

    def close(self) -> None: ...


class PlainReporter:
    """One plain line per change, flushed at once: what CI logs and pipes want."""

    def __init__(self, tally: Tally, stream: TextIO | None = None) -> None:
        self.tally = tally
        self.stream = stream or sys.stdout

    def note(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def line(self, number: int, text: str) -> None:
        done = self.tally.counts["downloaded"] + self.tally.counts["failed"]
        print(f"line {number}: {text} [{done}/{self.tally.total} done]", file=self.stream, flush=True)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


class QuietReporter:
    def note(self, text: str) -> None:
        pass

    def line(self, number: int, text: str) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


class LiveReporter:
    """A live panel on a terminal: a bar, counts by state, the estimate and the throughput.
    Failures and notes are printed above it, so they stay on screen after it is gone."""

    def __init__(self, tally: Tally, *, downloads: bool) -> None:
        self.tally = tally
        self.downloads = downloads
        self.console = Console(stderr=False)
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def note(self, text: str) -> None:
        self.console.print(Text(text))

    def line(self, number: int, text: str) -> None:
        if "failed" in text:
            self.console.print(Text(f"line {number}: {text}", style="red"))
        self.refresh()

    def refresh(self) -> None:
        self.live.update(self._render())

    def close(self) -> None:
        self.refresh()
        self.live.stop()

    def _render(self) -> Group:
        tally = self.tally
        done = tally.counts["failed"] + tally.counts["downloaded" if self.downloads else "completed"]
        if not self.downloads:
            done += tally.counts["downloaded"]
        table = Table.grid(padding=(0, 2))
        styles = {"waiting": "yellow", "processing": "cyan", "completed": "green", "failed": "red"}
        for _ in COLUMNS:
            table.add_column(justify="right")
        table.add_row(*(Text(name, style=styles.get(name, "bold green")) for name in COLUMNS))
        table.add_row(*(str(tally.counts[name]) for name in COLUMNS))
        rate = tally.throughput_per_minute()
        speed = f"{rate:.1f}/min" if rate is not None else "measuring"
        footer = Text(
            f"{done}/{tally.total} done   eta {duration(tally.eta_seconds())}   throughput {speed}",
            style="dim",
        )
        return Group(ProgressBar(total=max(1, tally.total), completed=done, width=60), table, footer)
