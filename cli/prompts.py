"""The prompt files `luma-queue batch` reads: .txt, .jsonl and .csv, or a .txt-style list on stdin.

Every format becomes the same list of `PromptLine`s, each with the number of the line it came from,
so a message, a manifest entry and a video's file name all point at the line a person can open.
A mistake anywhere in the file refuses the whole file (`PromptFileError`, naming the line) before
anything is submitted: a batch half sent because line 800 had a typo helps nobody.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The columns of a .csv header and the keys of a .jsonl object.
FIELDS = ("prompt", "image", "image_end", "aspect_ratio", "loop", "expand_prompt", "name")
BOOLEAN_FIELDS = ("loop", "expand_prompt")
TEXT_FIELDS = ("prompt", "image", "image_end", "aspect_ratio", "name")
PROMPT_MAX_CHARS = 5000  # the gateway's own bound (CreateRequest.prompt)
ASPECT_RATIO = re.compile(r"\d{1,2}:\d{1,2}")
SLUG_MAX_CHARS = 60
TRUE_WORDS = frozenset({"true", "yes", "1", "y"})
FALSE_WORDS = frozenset({"false", "no", "0", "n"})
STDIN = "-"


class PromptFileError(Exception):
    """The prompt file cannot be used as it is; the message names the file and the line."""


@dataclass(frozen=True)
class PromptLine:
    """One generation to make: what the file's line asked for, and where it was."""

    line: int
    prompt: str
    image: str | None = None
    image_end: str | None = None
    aspect_ratio: str | None = None
    loop: bool | None = None
    expand_prompt: bool | None = None
    name: str | None = None

    def images(self) -> list[str]:
        return [image for image in (self.image, self.image_end) if image]


def is_url(image: str) -> bool:
    return image.lower().startswith(("http://", "https://"))


def slugify(text: str) -> str:
    """Lower-case ASCII words joined by '-', at most 60 characters: a file name on any system."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:SLUG_MAX_CHARS].rstrip("-") or "video"


def read_prompts(source: str) -> tuple[list[PromptLine], Path]:
    """The lines of `source` (a path, or '-' for stdin) and the folder its relative image paths
    are relative to (the file's own folder; the current one for stdin)."""
    if source == STDIN:
        lines = parse_txt(sys.stdin.read(), "standard input")
        if not lines:
            raise PromptFileError("standard input: no prompts in it")
        return lines, Path.cwd()
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl", ".csv"):
        raise PromptFileError(
            f"{source}: PROMPTS must be a .txt, .jsonl or .csv file, or - for standard input"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a spreadsheet's BOM is not part of a column name
    except FileNotFoundError:
        raise PromptFileError(f"{source}: no such file") from None
    except UnicodeDecodeError:
        raise PromptFileError(f"{source}: not UTF-8 text") from None
    except OSError as error:
        raise PromptFileError(f"{source}: cannot be read ({error.strerror or error})") from None
    parse = {".txt": parse_txt, ".jsonl": parse_jsonl, ".csv": parse_csv}[suffix]
    lines = parse(text, source)
    if not lines:
        raise PromptFileError(f"{source}: no prompts in it")
    return lines, path.resolve().parent


def parse_txt(text: str, where: str) -> list[PromptLine]:
    """One prompt per line; blank lines and lines starting with '#' are skipped."""
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        prompt = raw.strip()
        if prompt and not prompt.startswith("#"):
            lines.append(_line(number, {"prompt": prompt}, where))
    return lines


def parse_jsonl(text: str, where: str) -> list[PromptLine]:
    """One JSON object per line (blank lines skipped)."""
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except json.JSONDecodeError as error:
            raise PromptFileError(f"{where} line {number}: not JSON ({error.msg})") from None
        if not isinstance(item, dict):
            raise PromptFileError(f"{where} line {number}: must be a JSON object with a prompt")
        lines.append(_line(number, item, where))
    return lines


def parse_csv(text: str, where: str) -> list[PromptLine]:
    """A header row naming the columns (prompt, and any of the other fields), then one row each."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [(column or "").strip() for column in reader.fieldnames or []]
    if "prompt" not in columns:
        raise PromptFileError(f"{where} line 1: the header must name a 'prompt' column, got {columns}")
    unknown = [column for column in columns if column not in FIELDS]
    if unknown:
        raise PromptFileError(
            f"{where} line 1: unknown column {unknown[0]!r}; columns are {', '.join(FIELDS)}"
        )
    reader.fieldnames = columns
    lines = []
    start = reader.line_num + 1
    for row in reader:
        if None in row:
            raise PromptFileError(f"{where} line {start}: more values than columns")
        values = {name: value.strip() for name, value in row.items() if value is not None and value.strip()}
        if values:
            lines.append(_line(start, values, where, from_text=True))
        start = reader.line_num + 1
    return lines


def _line(number: int, item: dict[str, Any], where: str, *, from_text: bool = False) -> PromptLine:
    """Check one line's fields; `from_text`: CSV cells, where booleans are words."""
    at = f"{where} line {number}"
    unknown = [name for name in item if name not in FIELDS]
    if unknown:
        raise PromptFileError(f"{at}: unknown field {unknown[0]!r}; fields are {', '.join(FIELDS)}")
    fields: dict[str, Any] = {}
    for name in TEXT_FIELDS:
        value = item.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise PromptFileError(f"{at}: {name} must be a string")
        if value.strip():
            fields[name] = value.strip()
    for name in BOOLEAN_FIELDS:
        value = item.get(name)
        if from_text and isinstance(value, str):
            word = value.lower()
            value = True if word in TRUE_WORDS else False if word in FALSE_WORDS else value
        if value is not None and not isinstance(value, bool):
            raise PromptFileError(f"{at}: {name} must be true or false, got {value!r}")
        fields[name] = value
    prompt = fields.get("prompt")
    if not prompt:
        raise PromptFileError(f"{at}: no prompt")
    if len(prompt) > PROMPT_MAX_CHARS:
        raise PromptFileError(f"{at}: the prompt has {len(prompt)} characters, at most {PROMPT_MAX_CHARS}")
    ratio = fields.get("aspect_ratio")
    if ratio is not None and not ASPECT_RATIO.fullmatch(ratio):
        raise PromptFileError(f"{at}: aspect_ratio must look like 16:9, got {ratio!r}")
    return PromptLine(line=number, **fields)


def resolve_images(lines: list[PromptLine], base: Path) -> dict[str, Path]:
    """Every local image the lines name, as the path to read; a missing one refuses the file."""
    local: dict[str, Path] = {}
    for line in lines:
        for image in line.images():
            if is_url(image) or image in local:
                continue
            path = base / Path(image).expanduser()  # an absolute one stays as it is
            if not path.is_file():
                raise PromptFileError(f"line {line.line}: image {image!r} is not a file (nor an http(s) URL)")
            local[image] = path
    return local


def fingerprint(line: PromptLine, image_digests: dict[str, str]) -> str:
    """What makes two lines the same generation: its request, with a local image by its content.

    The name is not in it: renaming a line's video must not make it again.
    """

    def image(value: str | None) -> str | None:
        if value is None or is_url(value):
            return value
        return "sha256:" + image_digests[value]

    canonical = json.dumps(
        [
            line.prompt,
            image(line.image),
            image(line.image_end),
            line.aspect_ratio,
            line.loop,
            line.expand_prompt,
        ],
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]
