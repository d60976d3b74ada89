"""OUT/manifest.jsonl: what `luma-queue batch` knows about each line, kept so a re-run can resume.

One JSON object per input line: `line`, `prompt`, `id`, `state`, `failure_reason`, `video_url`,
`file`, and what resuming needs besides (`input`, the line's fingerprint; `batch_id`; `name`;
`failure_message`; `error`, a download that kept failing; `retry_of`, the failed generation a
--retry-failed run made this one again for). `file` is set only once the video is
in place under OUT, so "done" is `state == "completed"` with a `file` that exists.

The file is always rewritten whole, through a temporary file renamed over it, so a crash or a
Ctrl-C at any moment leaves either the old manifest or the new one, never half of one. The same
holds for the record of uploaded images (OUT/.uploads.json), which lets a re-run send the very
same body (and so the same Idempotency-Key) for a chunk it may already have submitted.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cli.prompts import PromptLine, slugify

MANIFEST_NAME = "manifest.jsonl"
UPLOADS_NAME = ".uploads.json"
TERMINAL = frozenset({"completed", "failed"})


class ManifestError(Exception):
    """The manifest in OUT cannot be read; resuming from it would risk making lines twice."""


@dataclass
class Entry:
    line: int
    prompt: str
    id: str | None = None
    state: str | None = None  # the gateway's public state; None until submitted
    failure_reason: str | None = None
    video_url: str | None = None
    file: str | None = None  # relative to OUT; set once the whole video is there
    name: str | None = None
    input: str = ""  # the line's fingerprint (cli/prompts.py), to recognise it after edits
    batch_id: str | None = None
    failure_message: str | None = None
    error: str | None = None  # why the video could not be downloaded
    retry_of: str | None = None  # the failed generation this line's is a retry of (--retry-failed)
    # Not written: the file name this run wants for the line.
    target: str = field(default="", compare=False, repr=False)

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["target"]
        return data


def file_name(number: int, title: str, width: int) -> str:
    """OUT/<number, zero-padded to `width`>-<slug of the title>.mp4."""
    return f"{number:0{width}d}-{slugify(title)}.mp4"


def number_width(largest: int) -> int:
    """Digits for the numbers of a file's lines (at least 3), so that the names sort."""
    return max(3, len(str(largest)))


def load(out: Path) -> list[Entry]:
    path = out / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as error:
        raise ManifestError(f"{path}: cannot be read ({error.strerror or error})") from None
    entries = []
    known = set(Entry.__dataclass_fields__) - {"target"}
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
            entries.append(Entry(**{key: value for key, value in data.items() if key in known}))
        except (ValueError, TypeError):
            raise ManifestError(
                f"{path} line {number} is not a manifest entry; move the file away to start over "
                "(lines already submitted would then be made again)"
            ) from None
    return entries


def match(lines: list[PromptLine], fingerprints: list[str], previous: list[Entry]) -> list[Entry]:
    """An entry for each line: the previous run's for the same request (its own line first, so
    that identical lines keep their own), else a new one. Lines added, moved or edited since are
    recognised by their fingerprint, so an edit makes only the changed lines again."""
    by_input: dict[str, list[Entry]] = defaultdict(list)
    for entry in previous:
        by_input[entry.input].append(entry)
    width = number_width(max(line.line for line in lines))
    chosen: dict[int, Entry] = {}
    # Pass 1: same request on the same line; pass 2: the same request that moved.
    for same_line in (True, False):
        for index, (line, digest) in enumerate(zip(lines, fingerprints, strict=True)):
            if index in chosen:
                continue
            candidates = by_input.get(digest, [])
            for candidate in candidates:
                if not same_line or candidate.line == line.line:
                    candidates.remove(candidate)
                    chosen[index] = candidate
                    break
    entries = []
    for index, (line, digest) in enumerate(zip(lines, fingerprints, strict=True)):
        entry = chosen.get(index) or Entry(line=line.line, prompt=line.prompt, input=digest)
        entry.line, entry.prompt, entry.name, entry.input = line.line, line.prompt, line.name, digest
        entry.target = file_name(line.line, line.name or line.prompt, width)
        entries.append(entry)
    return entries


def place_files(out: Path, entries: list[Entry]) -> None:
    """Give already downloaded videos the names their lines now want (a line moved, or was
    renamed), in two steps so that two files trading names never overwrite each other."""
    moving = [
        entry
        for entry in entries
        if entry.file and entry.file != entry.target and (out / entry.file).is_file()
    ]
    for entry in entries:
        if entry.file and not (out / entry.file).is_file():
            entry.file = None  # deleted since: download it again
    parked = []
    for entry in moving:
        assert entry.file is not None
        park = out / f".moving-{entry.line}-{entry.target}"
        os.replace(out / entry.file, park)
        parked.append((entry, park))
    for entry, park in parked:
        os.replace(park, out / entry.target)
        entry.file = entry.target


def save(out: Path, entries: list[Entry]) -> None:
    text = "".join(json.dumps(entry.to_json(), ensure_ascii=False) + "\n" for entry in entries)
    write_atomically(out / MANIFEST_NAME, text.encode())


def load_uploads(out: Path) -> dict[str, str]:
    """Images already uploaded: sha256 of the bytes -> public_url."""
    try:
        data = json.loads((out / UPLOADS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(key): str(value) for key, value in data.items()} if isinstance(data, dict) else {}


def save_uploads(out: Path, uploads: dict[str, str]) -> None:
    write_atomically(out / UPLOADS_NAME, json.dumps(uploads, indent=1).encode())


def write_atomically(path: Path, data: bytes) -> None:
    """Write a temporary file beside `path`, flush it to disk, and rename it over `path`."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
