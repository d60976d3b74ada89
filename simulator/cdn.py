"""Luma's storage and CDN: presigned uploads, public upload URLs, generated media.

No cookie here, as on the real bucket and CDN: a presigned URL carries its own signature and public
URLs are public. Errors are S3's XML, which is what a client talking to a bucket gets.
"""

from __future__ import annotations

from aiohttp import web

from simulator.errors import s3_error
from simulator.keys import STATE_KEY
from simulator.media import MEDIA_FILES
from simulator.state import UploadExpired, UploadNotFound, UploadSignatureInvalid


async def put_upload(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    upload_id = request.match_info["upload_id"]
    upload = state.uploads.get(upload_id)
    content_type = request.headers.get("Content-Type", "")
    if upload is not None and upload.file_type == "image" and not content_type.startswith("image/"):
        return s3_error(400, "InvalidArgument", f"Content-Type must be an image type, got {content_type!r}")
    try:
        state.put_upload(
            upload_id,
            request.query.get("X-Amz-Signature", ""),
            await request.read(),
            content_type or "application/octet-stream",
        )
    except UploadNotFound:
        return s3_error(404, "NoSuchUpload", "The specified upload does not exist.")
    except UploadSignatureInvalid:
        return s3_error(
            403, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature."
        )
    except UploadExpired:
        return s3_error(403, "AccessDenied", "Request has expired")
    return web.Response(status=200)


async def get_public_upload(request: web.Request) -> web.Response:
    upload = request.app[STATE_KEY].uploaded(request.match_info["upload_id"])
    if upload is None or upload.filename != request.match_info["filename"] or upload.data is None:
        # Before the PUT the key does not exist in the bucket.
        return s3_error(404, "NoSuchKey", "The specified key does not exist.")
    # Headers, not content_type=: the stored value may carry parameters, served back verbatim.
    return web.Response(
        body=upload.data, headers={"Content-Type": upload.content_type or "application/octet-stream"}
    )


async def get_media(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    media = MEDIA_FILES.get(request.match_info["name"])
    if media is None or not state.video_ready(request.match_info["generation_id"]):
        return s3_error(404, "NoSuchKey", "The specified key does not exist.")
    body, content_type = media
    return web.Response(body=body, content_type=content_type)


def add_routes(app: web.Application) -> None:
    app.router.add_put("/_storage/upload/{upload_id}", put_upload)
    app.router.add_get("/_storage/public/{upload_id}/{filename}", get_public_upload)
    app.router.add_get("/_media/{generation_id}/{name}", get_media)
