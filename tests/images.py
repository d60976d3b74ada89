"""Real, tiny images for upload tests: the api decodes what it is sent, so fakes are refused."""

from __future__ import annotations

import io

from PIL import Image


def image_bytes(kind: str = "PNG", size: tuple[int, int] = (4, 3)) -> bytes:
    """A small image of `kind` (a Pillow format name: JPEG, PNG, GIF, WEBP) that decodes whole."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 60, 20)).save(buffer, kind)
    return buffer.getvalue()


JPEG = image_bytes("JPEG")
PNG = image_bytes("PNG")
GIF = image_bytes("GIF")
WEBP = image_bytes("WEBP")
