"""Media that outlive the simulator process: uploaded images and which generations have videos.

Luma's CDN keeps what it hands out, so the gateway keeps its URLs in Redis for a month. A
simulator that forgets them on restart turns every old URL into a 404 under `make dev`; with a
`media_dir` (the dev stack gives it `.run/simulator/`), the bytes of each upload and a small note
per generation are written there and read back for whatever the process no longer holds.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from simulator.models import Generation, Upload

# Ids are the simulator's own uuids; anything else in a URL is not looked up on disk.
SAFE_ID = re.compile(r"^[0-9a-f-]{36}$")


@dataclass(frozen=True)
class KeptGeneration:
    outcome: str
    video_url_at: float

    def video_ready_at(self, t: float) -> bool:
        return self.outcome == "completed" and t >= self.video_url_at


class MediaDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "uploads").mkdir(parents=True, exist_ok=True)
        (root / "generations").mkdir(parents=True, exist_ok=True)

    def keep_generation(self, generation: Generation) -> None:
        note = {"outcome": generation.outcome, "video_url_at": generation.video_url_at}
        self._write(self.root / "generations" / f"{generation.id}.json", json.dumps(note).encode())

    def generation(self, generation_id: str) -> KeptGeneration | None:
        if not SAFE_ID.match(generation_id):
            return None
        path = self.root / "generations" / f"{generation_id}.json"
        try:
            note = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        return KeptGeneration(outcome=str(note["outcome"]), video_url_at=float(note["video_url_at"]))

    def keep_upload(self, upload: Upload) -> None:
        meta = {
            "account": upload.account,
            "file_type": upload.file_type,
            "filename": upload.filename,
            "content_type": upload.content_type,
            "created_at": upload.created_at,
            "uploaded_at": upload.uploaded_at,
        }
        directory = self.root / "uploads" / upload.id
        directory.mkdir(exist_ok=True)
        self._write(directory / "data", upload.data or b"")
        self._write(directory / "meta.json", json.dumps(meta).encode())

    def upload(self, upload_id: str) -> Upload | None:
        """An upload whose bytes arrived before a restart (no signature: it cannot be PUT again)."""
        if not SAFE_ID.match(upload_id):
            return None
        directory = self.root / "uploads" / upload_id
        try:
            meta = json.loads((directory / "meta.json").read_bytes())
            data = (directory / "data").read_bytes()
        except (OSError, ValueError):
            return None
        return Upload(
            id=upload_id,
            account=str(meta["account"]),
            file_type=str(meta["file_type"]),
            filename=str(meta["filename"]),
            signature="",
            created_at=float(meta["created_at"]),
            content_type=meta.get("content_type"),
            data=data,
            uploaded_at=meta.get("uploaded_at"),
        )

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        # Written whole, then renamed: a crash never leaves half a file for the next run to serve.
        partial = path.with_suffix(path.suffix + ".partial")
        partial.write_bytes(data)
        partial.replace(path)
