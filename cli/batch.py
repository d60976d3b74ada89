"""`luma-queue batch | status | download`: a file of prompts in, a folder of videos out.

`batch` reads the prompts (cli/prompts.py), matches them with what OUT/manifest.jsonl says an
earlier run did (cli/manifest.py), and then:

1. uploads each local image once and submits the lines not yet submitted through
   POST /api/generations/batch in chunks. Each chunk carries an Idempotency-Key derived from its
   lines' content and the output folder, so a chunk sent again (after a Ctrl-C, a crash, a lost
   answer) answers what the gateway stored the first time instead of making it again; the ids are
   in the manifest the moment the answer arrives. A 429 waits for its Retry-After.
2. follows its generations: the live event stream where the gateway has it (with a slow listing
   by ids as a safety net), else a listing by ids, a hundred per request;
3. downloads each completed video as it completes (cli/client.py: temporary file, renamed).

Everything it knows goes to the manifest as it changes, so a Ctrl-C (exit 130) or a crash loses
nothing: the same command resumes. The client speaks only the gateway's public HTTP API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import shlex
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli import manifest
from cli.client import (
    CONNECTED,
    Busy,
    DownloadError,
    Gateway,
    GatewayError,
    NoEventStream,
    Refused,
    Unauthorized,
    Unreachable,
    View,
)
from cli.manifest import Entry, ManifestError
from cli.progress import LiveReporter, PlainReporter, QuietReporter, Reporter, Tally, summary_counts
from cli.prompts import (
    PromptFileError,
    PromptLine,
    fingerprint,
    is_url,
    read_prompts,
    resolve_images,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_OUT = "./luma-videos"
DEFAULT_CHUNK = 100
# With the event stream up, listing is only a safety net; without it, it is how we follow.
SAFETY_POLL_SECONDS = 15.0
POLL_SECONDS = 2.0
SAVE_EVERY_SECONDS = 0.5
DOWNLOAD_ATTEMPTS = 5
# A video URL that answers these may have expired: ask the gateway for the generation again.
STALE_URL_STATUSES = frozenset({401, 403, 404, 410})
STREAM_RETRY_MAX_SECONDS = 10.0
STATE_ORDER = {"pending": 0, "processing": 1, "completed": 2, "failed": 2}


@dataclass(frozen=True)
class Options:
    url: str
    key: str | None
    out: Path
    quiet: bool
    no_wait: bool
    no_download: bool
    chunk_size: int
    parallel_downloads: int
    argv: tuple[str, ...]


class Stop(Exception):
    """A usage error found while running (a refused chunk): the message is shown, exit 2."""


def video_url(view: View) -> str | None:
    """Where a completed generation's video is: the watermark-free link when there is one."""
    video = view.get("video")
    if not isinstance(video, dict):
        return None
    url = video.get("download_url") or video.get("url")
    return str(url) if url else None


def display_state(entry: Entry, downloads: bool) -> str | None:
    """Where a line stands, in the live display's words (None: not submitted yet)."""
    if entry.state is None:
        return None
    if entry.state == "failed" or entry.error:
        return "failed"
    if entry.state == "completed":
        return "downloaded" if entry.file else "completed"
    return "waiting" if entry.state == "pending" else "processing"


def resume_command(argv: Iterable[str]) -> str:
    """The command line to run again, with a --key value left out (it is never printed)."""
    shown: list[str] = []
    skip = False
    hid_key = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--key":
            skip = hid_key = True
            continue
        if arg.startswith("--key="):
            hid_key = True
            continue
        shown.append(arg)
    return "luma-queue " + shlex.join(shown) + (" --key ..." if hid_key else "")


class BatchRun:
    """One run of `luma-queue batch` over the lines of one prompt file."""

    def __init__(
        self,
        options: Options,
        lines: list[PromptLine],
        entries: list[Entry],
        images: dict[str, Path],
        digests: dict[str, str],
        gateway: Gateway,
    ) -> None:
        self.options = options
        self.lines = {line.line: line for line in lines}
        self.entries = entries
        self.images = images
        self.digests = digests
        self.gateway = gateway
        self.by_id = {entry.id: entry for entry in entries if entry.id}
        self.tally = Tally(total=len(entries))
        self.reporter: Reporter = QuietReporter()
        self.downloads: asyncio.Queue[Entry] = asyncio.Queue()
        self.queued: set[str] = set()
        self.done = asyncio.Event()
        self.dirty = False
        self.stream_live = False
        self.poll_now = asyncio.Event()
        self.batch_ids: list[str] = list(dict.fromkeys(entry.batch_id for entry in entries if entry.batch_id))

    @property
    def want_downloads(self) -> bool:
        return not self.options.no_download

    # -- bookkeeping -------------------------------------------------------------------------------

    def finished(self, entry: Entry) -> bool:
        """Nothing more to do for this line in this run."""
        if entry.state == "failed":
            return True
        if entry.state != "completed":
            return False
        return not self.want_downloads or entry.file is not None or entry.error is not None

    def count(self) -> None:
        counts = dict.fromkeys(self.tally.counts, 0)
        for entry in self.entries:
            state = display_state(entry, self.want_downloads)
            if state is not None:
                counts[state] += 1
        self.tally.counts = counts
        self.dirty = True
        if all(entry.id and self.finished(entry) for entry in self.entries):
            self.done.set()
        self.reporter.refresh()

    def save(self) -> None:
        manifest.save(self.options.out, self.entries)
        self.dirty = False

    def output_path(self, entry: Entry) -> str:
        return str(self.options.out / entry.target)

    # -- 1. submit ---------------------------------------------------------------------------------

    async def submit(self) -> None:
        waiting = [entry for entry in self.entries if entry.id is None]
        if not waiting:
            return
        uploaded = await self.upload_images(waiting)
        size = self.options.chunk_size
        while waiting:
            chunk = waiting[:size]
            items = [self.item(self.lines[entry.line], uploaded) for entry in chunk]
            try:
                batch_id, views = await self.send(chunk, items)
            except Busy as busy:
                if busy.limit is not None and busy.limit < len(chunk):
                    size = max(1, busy.limit)  # more than one request may ever ask for: split it
                    continue
                self.reporter.note(
                    f"the gateway is busy ({busy.message}); trying again in {busy.retry_after:g}s"
                )
                await asyncio.sleep(busy.retry_after)
                continue
            except Refused as refused:
                smaller = _smaller_chunk(refused, len(chunk))
                if smaller is None:
                    raise Stop(self.explain(refused, chunk)) from None
                size = smaller
                continue
            for entry, view in zip(chunk, views, strict=True):
                entry.id, entry.batch_id = str(view["id"]), batch_id
                self.by_id[entry.id] = entry
                self.observe(entry, view, report=False)
            if batch_id not in self.batch_ids:
                self.batch_ids.append(batch_id)
            self.save()  # before anything else: these lines are now the gateway's
            self.count()
            self.poll_now.set()  # what the stream said of them before we knew their ids
            numbers = line_ranges([entry.line for entry in chunk])
            self.reporter.note(f"submitted {len(chunk)} lines ({numbers}) as batch {batch_id}")
            waiting = waiting[len(chunk) :]

    async def send(self, chunk: list[Entry], items: list[dict[str, Any]]) -> tuple[str, list[View]]:
        """Submit one chunk. A Ctrl-C meanwhile lets the request finish and its answer be written
        down before the run stops: what the gateway accepted is never left unrecorded."""
        key = self.idempotency_key(chunk, items)
        request = asyncio.ensure_future(self.gateway.submit_batch(items, key))
        try:
            return await asyncio.shield(request)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                batch_id, views = await asyncio.wait_for(request, timeout=30)
                for entry, view in zip(chunk, views, strict=True):
                    entry.id, entry.batch_id, entry.state = str(view["id"]), batch_id, str(view["state"])
                self.save()
            raise

    def idempotency_key(self, chunk: list[Entry], items: list[dict[str, Any]]) -> str:
        """The same lines, asking the same things, for the same folder: the same key. A retry of
        a failed line names the generation it retries, so it is not answered by that one."""
        material = json.dumps(
            [
                str(self.options.out.resolve()),
                [
                    [entry.line, item, *([entry.retry_of] if entry.retry_of else [])]
                    for entry, item in zip(chunk, items, strict=True)
                ],
            ],
            sort_keys=True,
            separators=(",", ":"),
        )
        return "luma-queue-batch-" + hashlib.sha256(material.encode()).hexdigest()[:48]

    def item(self, line: PromptLine, uploaded: dict[str, str]) -> dict[str, Any]:
        item: dict[str, Any] = {"prompt": line.prompt}
        for name in ("image", "image_end"):
            image = getattr(line, name)
            if image:
                item[name] = image if is_url(image) else uploaded[self.digests[image]]
        for name in ("aspect_ratio", "loop", "expand_prompt"):
            value = getattr(line, name)
            if value is not None:
                item[name] = value
        return item

    async def upload_images(self, entries: list[Entry]) -> dict[str, str]:
        """Each local image the unsubmitted lines name, uploaded once (by content), remembered in
        OUT so that a re-run sends the same URL, and so the same chunk body, again."""
        uploaded = manifest.load_uploads(self.options.out)
        for entry in entries:
            for image in self.lines[entry.line].images():
                if is_url(image):
                    continue
                digest = self.digests[image]
                if digest in uploaded:
                    continue
                self.reporter.note(f"uploading {image}")
                uploaded[digest] = await self.gateway.upload(
                    self.images[image].name, self.images[image].read_bytes()
                )
                manifest.save_uploads(self.options.out, uploaded)
        return uploaded

    def explain(self, refused: Refused, chunk: list[Entry]) -> str:
        """A refused chunk in the file's terms: `items.2.prompt` is a line of the file."""
        problems = []
        for error in refused.body.get("errors") or []:
            field = str(error.get("field", ""))
            parts = field.split(".")
            if len(parts) >= 2 and parts[0] == "items" and parts[1].isdigit() and int(parts[1]) < len(chunk):
                where = f"line {chunk[int(parts[1])].line}: " + ".".join(parts[2:])
                problems.append(f"{where}: {error.get('message')}")
        if problems:
            return "the gateway refused: " + "; ".join(problems)
        return str(refused)

    # -- 2. follow ---------------------------------------------------------------------------------

    def observe(self, entry: Entry, view: View, *, report: bool = True) -> None:
        """A reading of one generation: note what changed, and queue its video once completed."""
        state = str(view.get("state"))
        if STATE_ORDER.get(state, 0) < STATE_ORDER.get(entry.state or "", 0):
            return  # a listing that left before an event we already had: states only go forward
        self.tally.saw(str(entry.id), state, view.get("queue_position"), view.get("estimate_wait_seconds"))
        url = video_url(view) if state == "completed" else None
        changed = state != entry.state or (url is not None and url != entry.video_url)
        entry.state = state
        entry.failure_reason = view.get("failure_reason")
        entry.failure_message = view.get("failure_message")
        if url is not None:
            entry.video_url = url
        wanted = state == "completed" and self.want_downloads and entry.file is None and entry.error is None
        if wanted and entry.video_url and entry.id not in self.queued:
            self.queued.add(str(entry.id))
            self.downloads.put_nowait(entry)
        if changed:
            self.count()
            if report:
                self.reporter.line(
                    entry.line, f"failed: {self.reason(entry)}" if state == "failed" else state
                )

    @staticmethod
    def reason(entry: Entry) -> str:
        if entry.error:
            return entry.error
        reason = entry.failure_reason or "no reason given"
        return f"{reason} ({entry.failure_message})" if entry.failure_message else reason

    def unsettled_ids(self) -> list[str]:
        """Generations still worth asking about: not ended, or completed without a URL yet."""
        return [
            str(entry.id)
            for entry in self.entries
            if entry.id and not self.finished(entry) and not (entry.state == "completed" and entry.video_url)
        ]

    async def follow(self) -> None:
        """Submit what is left while following what is in: a submission held back by the
        gateway's limits (429s) can last long, and videos must not wait for its end."""
        self.count()
        if self.done.is_set():
            return
        for entry in self.entries:
            if entry.state == "completed" and entry.video_url and not self.finished(entry):
                # From an earlier run: its URL may have expired, but a download that fails for it
                # asks the gateway for the generation again.
                self.queued.add(str(entry.id))
                self.downloads.put_nowait(entry)
        helpers = [
            asyncio.create_task(self.submit(), name="submit"),
            asyncio.create_task(self.listen(), name="listen"),
            asyncio.create_task(self.poll(), name="poll"),
            asyncio.create_task(self.keep_saving(), name="save"),
        ]
        if self.want_downloads:
            helpers += [
                asyncio.create_task(self.download_videos(), name=f"download-{n}")
                for n in range(self.options.parallel_downloads)
            ]
        finished = asyncio.create_task(self.done.wait(), name="done")
        try:
            pending = {finished, *helpers}
            while not finished.done():
                ended, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in ended:
                    if task is not finished:
                        task.result()  # a helper's error (a refused key) ends the run
        finally:
            for task in [finished, *helpers]:
                task.cancel()
            await asyncio.gather(finished, *helpers, return_exceptions=True)

    async def listen(self) -> None:
        """Follow the live event stream, resuming where it broke off; without one, leave it to poll()."""
        last: str | None = None
        delay = 0.5
        while True:
            try:
                async for event_id, view in self.gateway.events(last):
                    if event_id == CONNECTED:
                        self.stream_live = True
                        self.poll_now.set()  # changes from here on arrive; read what happened before
                        delay = 0.5
                        continue
                    last = event_id
                    entry = self.by_id.get(str(view.get("id")))
                    if entry is not None:
                        self.observe(entry, view)
            except NoEventStream:
                self.stream_live = False
                self.poll_now.set()
                return
            except Unauthorized:
                raise
            except (GatewayError, asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                pass
            self.stream_live = False
            self.poll_now.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, STREAM_RETRY_MAX_SECONDS)

    async def poll(self) -> None:
        """List the unsettled generations by id, a hundred a request: often while there is no
        stream, now and then while there is one (a safety net for anything it missed)."""
        while True:
            with contextlib.suppress(TimeoutError):
                interval = SAFETY_POLL_SECONDS if self.stream_live else POLL_SECONDS
                await asyncio.wait_for(self.poll_now.wait(), timeout=interval)
            self.poll_now.clear()
            ids = self.unsettled_ids()
            if ids:
                for view in await self.gateway.by_ids(ids):
                    entry = self.by_id.get(str(view.get("id")))
                    if entry is not None:
                        self.observe(entry, view)

    async def keep_saving(self) -> None:
        while True:
            await asyncio.sleep(SAVE_EVERY_SECONDS)
            if self.dirty:
                self.save()

    # -- 3. download -------------------------------------------------------------------------------

    async def download_videos(self) -> None:
        while True:
            entry = await self.downloads.get()
            try:
                await self.download(entry)
            finally:
                self.queued.discard(str(entry.id))

    async def download(self, entry: Entry) -> None:
        destination = self.options.out / entry.target
        error: DownloadError | None = None
        for attempt in range(DOWNLOAD_ATTEMPTS):
            if attempt:
                await asyncio.sleep(min(8.0, 0.5 * 2**attempt))
            if not entry.video_url:
                break
            try:
                await self.gateway.download(entry.video_url, destination)
            except DownloadError as failed:
                error = failed
                if failed.status in STALE_URL_STATUSES:
                    await self.refresh_url(entry)
                continue
            entry.file, entry.error = entry.target, None
            self.count()
            self.reporter.line(entry.line, f"downloaded {self.output_path(entry)}")
            return
        entry.error = f"download failed: {error}" if error else "download failed: no video URL"
        self.count()
        self.reporter.line(entry.line, entry.error)

    async def refresh_url(self, entry: Entry) -> None:
        with contextlib.suppress(Refused):
            view = await self.gateway.generation(str(entry.id))
            url = video_url(view)
            if url:
                entry.video_url = url

    # -- the end -----------------------------------------------------------------------------------

    def summary(self) -> tuple[int, str]:
        lines = [f"{len(self.entries)} lines: {summary_counts(self.tally)}"]
        if self.want_downloads and self.tally.counts["downloaded"]:
            lines[0] += f" (videos in {self.options.out})"
        failed = [entry for entry in self.entries if entry.state == "failed" or entry.error]
        for entry in failed:
            lines.append(f"  line {entry.line} failed: {self.reason(entry)}  [{entry.prompt[:60]}]")
        if failed:
            return EXIT_FAILED, "\n".join(lines)
        return EXIT_OK, "\n".join(lines)


def line_ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 7, 9, 10] -> "1-3, 7, 9-10": which lines, in few characters."""
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return ", ".join(str(start) if start == end else f"{start}-{end}" for start, end in runs)


def _smaller_chunk(refused: Refused, size: int) -> int | None:
    """A chunk the gateway refused for its size: the size it would take (None: not that)."""
    if refused.status == 413 and size > 1:
        return size // 2
    if refused.status == 400:
        for error in refused.body.get("errors") or []:
            if error.get("field") == "items":
                found = [int(word) for word in str(error.get("message", "")).split() if word.isdigit()]
                if found and found[0] < size:
                    return max(1, found[0])  # "at most 1000 items in one batch, got 1200"
    return None


def options_from(args: argparse.Namespace) -> Options:
    return Options(
        url=args.url,
        key=args.key or None,
        out=Path(getattr(args, "out", DEFAULT_OUT)),
        quiet=args.quiet,
        no_wait=getattr(args, "no_wait", False),
        no_download=getattr(args, "no_download", False),
        chunk_size=getattr(args, "chunk_size", DEFAULT_CHUNK),
        parallel_downloads=getattr(args, "parallel_downloads", 4),
        argv=tuple(sys.argv[1:]),
    )


def fail(command: str, message: str) -> int:
    print(f"luma-queue {command}: {message}", file=sys.stderr)
    return EXIT_USAGE


def run_batch(args: argparse.Namespace) -> int:
    """`luma-queue batch PROMPTS`: the exit status (0 all done, 1 some failed, 2 usage, 130 Ctrl-C)."""
    options = options_from(args)
    try:
        lines, base = read_prompts(args.prompts)
        images = resolve_images(lines, base)
        digests = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in images.items()}
        options.out.mkdir(parents=True, exist_ok=True)
        entries = manifest.match(
            lines, [fingerprint(line, digests) for line in lines], manifest.load(options.out)
        )
        manifest.place_files(options.out, entries)
        for entry in entries:
            entry.error = None  # a download that failed last time is tried again
            if args.retry_failed and entry.state == "failed":
                entry.retry_of, entry.id, entry.batch_id = entry.id, None, None
                entry.state = entry.failure_reason = entry.failure_message = None
    except (PromptFileError, ManifestError) as error:
        return fail("batch", str(error))
    except OSError as error:
        return fail("batch", f"{error.filename or options.out}: {error.strerror or error}")
    return asyncio.run(_batch(options, lines, entries, images, digests))


async def _batch(
    options: Options,
    lines: list[PromptLine],
    entries: list[Entry],
    images: dict[str, Path],
    digests: dict[str, str],
) -> int:
    async with Gateway(options.url, options.key) as gateway:
        run = BatchRun(options, lines, entries, images, digests, gateway)
        run.count()
        if options.quiet:
            run.reporter = QuietReporter()
        elif sys.stdout.isatty():
            run.reporter = LiveReporter(run.tally, downloads=run.want_downloads)
        else:
            run.reporter = PlainReporter(run.tally)
        work = asyncio.current_task()
        assert work is not None
        interrupted = False

        def on_interrupt() -> None:
            nonlocal interrupted
            interrupted = True
            work.cancel()

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
        try:
            if options.no_wait:
                await run.submit()
                run.reporter.close()
                print(f"submitted: batch {' '.join(run.batch_ids) or '(nothing new)'}")
                print(f"follow it with: luma-queue status {' '.join(run.batch_ids)}")
                return EXIT_OK
            await run.follow()
        except asyncio.CancelledError:
            if not interrupted:
                raise
            work.uncancel()
            run.reporter.close()
            left = sum(1 for entry in entries if not run.finished(entry))
            print(
                f"\nStopped: {left} of {len(entries)} lines not finished. Nothing submitted is lost or "
                f"made again: to resume, run the same command:\n  {resume_command(options.argv)}",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        except (Unreachable, Unauthorized, Stop) as error:
            run.reporter.close()
            return fail("batch", str(error))
        except GatewayError as error:
            run.reporter.close()
            return fail("batch", str(error))
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            run.save()
        run.reporter.close()
        code, text = run.summary()
        print(text)
        return code


# -- status and download -------------------------------------------------------------------------


def run_status(args: argparse.Namespace) -> int:
    """`luma-queue status BATCH_ID...`: each batch's counts by state, and its failures."""
    return asyncio.run(_status(options_from(args), args.batch_ids))


async def _status(options: Options, batch_ids: list[str]) -> int:
    async with Gateway(options.url, options.key) as gateway:
        try:
            for batch_id in batch_ids:
                views = await gateway.batch(batch_id)
                if not views:
                    return fail("status", f"no batch {batch_id!r} for this key")
                counts = {state: 0 for state in ("pending", "processing", "completed", "failed")}
                for view in views:
                    counts[str(view.get("state"))] = counts.get(str(view.get("state")), 0) + 1
                shown = ", ".join(
                    f"{count} {'waiting' if state == 'pending' else state}" for state, count in counts.items()
                )
                print(f"batch {batch_id}: {len(views)} generations: {shown}")
                for number, view in enumerate(views, 1):
                    if view.get("state") == "failed":
                        reason = view.get("failure_reason") or "no reason given"
                        print(f"  #{number} failed: {reason}  [{str(view.get('prompt', ''))[:60]}]")
        except GatewayError as error:
            return fail("status", str(error))
    return EXIT_OK


def run_download(args: argparse.Namespace) -> int:
    """`luma-queue download BATCH_ID... --out DIR`: fetch every video these batches finished."""
    options = options_from(args)
    try:
        options.out.mkdir(parents=True, exist_ok=True)
        entries = manifest.load(options.out)
    except ManifestError as error:
        return fail("download", str(error))
    except OSError as error:
        return fail("download", f"{options.out}: {error.strerror or error}")
    return asyncio.run(_download(options, args.batch_ids, entries))


async def _download(options: Options, batch_ids: list[str], entries: list[Entry]) -> int:
    """Videos are named as `batch` names them: by the manifest's line when OUT has the batch's
    manifest, else by the generation's place in its batch."""
    known = {entry.id: entry for entry in entries if entry.id}
    line_width = manifest.number_width(max((entry.line for entry in entries), default=0))

    def say(text: str) -> None:
        if not options.quiet:
            print(text, flush=True)

    fetched = present = unfinished = 0
    failed: list[str] = []
    async with Gateway(options.url, options.key) as gateway:
        try:
            for batch_id in batch_ids:
                views = await gateway.batch(batch_id)
                if not views:
                    return fail("download", f"no batch {batch_id!r} for this key")
                width = manifest.number_width(len(views))
                for number, view in enumerate(views, 1):
                    entry = known.get(str(view.get("id")))
                    if entry is not None:
                        name = manifest.file_name(entry.line, entry.name or entry.prompt, line_width)
                    else:
                        name = manifest.file_name(number, str(view.get("prompt", "")), width)
                    state = view.get("state")
                    if state == "failed":
                        failed.append(
                            f"  #{number} failed: {view.get('failure_reason') or 'no reason given'}"
                        )
                        continue
                    url = video_url(view)
                    if state != "completed" or not url:
                        unfinished += 1
                        continue
                    if (options.out / name).is_file():
                        present += 1
                    else:
                        try:
                            await _fetch(gateway, url, options.out / name)
                        except DownloadError as error:
                            failed.append(f"  #{number} {name}: {error}")
                            continue
                        fetched += 1
                        say(f"downloaded {options.out / name}")
                    if entry is not None:
                        entry.file, entry.video_url, entry.state = name, url, "completed"
        except GatewayError as error:
            return fail("download", str(error))
        finally:
            if known:
                manifest.save(options.out, entries)
    print(
        f"{fetched} downloaded, {present} already there, {unfinished} not finished yet, "
        f"{len(failed)} failed (videos in {options.out})"
    )
    for line in failed:
        print(line)
    return EXIT_FAILED if failed else EXIT_OK


async def _fetch(gateway: Gateway, url: str, destination: Path) -> None:
    for attempt in range(DOWNLOAD_ATTEMPTS):
        try:
            await gateway.download(url, destination)
            return
        except DownloadError:
            if attempt == DOWNLOAD_ATTEMPTS - 1:
                raise
            await asyncio.sleep(min(8.0, 0.5 * 2 ** (attempt + 1)))
