"""Placeholder media the simulator's "CDN" serves: a few KB with the right magic bytes.

Clients only download and store these files; real video would make tests slow and the repo heavy.
The MP4 is a valid box structure (ftyp + free); the JPEG has SOI/APP0/COM/EOI markers.
"""

from __future__ import annotations

import struct

VIDEO_SIZE = 4096
IMAGE_SIZE = 2048


def _mp4(size: int) -> bytes:
    ftyp = b"isom" + struct.pack(">I", 512) + b"isomiso2avc1mp41"
    ftyp_box = struct.pack(">I", 8 + len(ftyp)) + b"ftyp" + ftyp
    free_size = size - len(ftyp_box)
    return ftyp_box + struct.pack(">I", free_size) + b"free" + b"\0" * (free_size - 8)


def _jpeg(size: int) -> bytes:
    app0 = b"JFIF\0" + bytes([1, 1, 0]) + struct.pack(">HH", 1, 1) + b"\0\0"
    head = b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", 2 + len(app0)) + app0
    comment = b"luma-simulator placeholder ".ljust(size - len(head) - 4 - 2, b".")
    return head + b"\xff\xfe" + struct.pack(">H", 2 + len(comment)) + comment + b"\xff\xd9"


VIDEO_BYTES = _mp4(VIDEO_SIZE)
IMAGE_BYTES = _jpeg(IMAGE_SIZE)

# File name in a media URL -> (body, content type).
MEDIA_FILES: dict[str, tuple[bytes, str]] = {
    "video.mp4": (VIDEO_BYTES, "video/mp4"),
    "download.mp4": (VIDEO_BYTES, "video/mp4"),
    "thumbnail.jpg": (IMAGE_BYTES, "image/jpeg"),
    "last_frame.jpg": (IMAGE_BYTES, "image/jpeg"),
}
