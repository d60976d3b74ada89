"""Is this upload really an image we take? Decoded with Pillow, not only sniffed.

Magic bytes alone let a PNG signature followed by an HTML page through. Decoding the whole image
refuses that (415), and reading the dimensions first refuses a small file that would decode to
gigabytes of pixels (413) before any pixel is decoded. Decoding is CPU work, so it runs on a small
thread pool of its own (`DECODER`), which also bounds how many images are in memory at once.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import web
from PIL import Image, UnidentifiedImageError

from api.errors import ImageTooLarge, NotAnImage

# Pillow's format name -> (content type, file extension) of the formats Luma takes.
FORMATS = {
    "JPEG": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "GIF": ("image/gif", "gif"),
    "WEBP": ("image/webp", "webp"),
}
# Decodes at once per api process; each can hold an image's pixels (4 bytes each) in memory.
DECODE_THREADS = 2
# A JPEG is decoded at 1/8 scale: every byte of it is still read and checked, at 1/64 the memory.
JPEG_CHECK_SCALE = 8

DECODER = web.AppKey("image_decoder", ThreadPoolExecutor)


@dataclass(frozen=True)
class ImageKind:
    content_type: str
    extension: str
    width: int
    height: int


def inspect_image(data: bytes, max_pixels: int) -> ImageKind:
    """The image's kind and size after decoding it whole; NotAnImage or ImageTooLarge otherwise."""
    try:
        with Image.open(io.BytesIO(data), formats=list(FORMATS)) as image:
            kind = FORMATS[str(image.format)]
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLarge(
                    f"the image is {width}x{height} pixels; the limit is {max_pixels} pixels in all"
                )
            if image.format == "JPEG":
                image.draft("RGB", (max(1, width // JPEG_CHECK_SCALE), max(1, height // JPEG_CHECK_SCALE)))
            image.load()
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"the image has more than {max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, KeyError):
        # Pillow's ways of saying "not this format" or "broken after the header"; its messages
        # say little more than that, so the caller gets ours.
        raise NotAnImage from None
    return ImageKind(content_type=kind[0], extension=kind[1], width=width, height=height)


async def image_decoder(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the decode thread pool, shut down with the app."""
    executor = ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="image-decode")
    app[DECODER] = executor
    yield
    executor.shutdown(wait=False, cancel_futures=True)
