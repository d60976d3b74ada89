"""Images the gateway keeps itself, served at PUBLIC_BASE_URL/files/<id>.

The official API takes only public image URLs and has no upload of its own, so when no web
account can hold an upload (or an external image must be handed to an official account), the
bytes are kept here: in a directory by default (FILES_DIR; every api process must see the same
one), or in an S3-compatible bucket when FILES_S3_BUCKET is set (needs the `s3` extra,
aiobotocore). Luma fetches them from PUBLIC_BASE_URL, so that must be reachable from the internet.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path
from typing import Any, Protocol

from shared.settings import Settings

FILE_ID = re.compile(r"^[0-9a-f]{32}\.(jpg|png|gif|webp)$")
EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp"}
FILES_PATH = "/files/"


class FileStore(Protocol):
    async def put(self, file_id: str, data: bytes, content_type: str) -> None: ...

    async def get(self, file_id: str) -> tuple[bytes, str] | None:
        """The bytes and their content type, or None if there is no such file."""
        ...


def new_file_id(content_type: str) -> str:
    return f"{uuid.uuid4().hex}.{EXTENSIONS.get(content_type, 'jpg')}"


def public_url(settings: Settings, file_id: str) -> str:
    return f"{settings.public_base_url}{FILES_PATH}{file_id}"


def file_id_of(settings: Settings, url: str) -> str | None:
    """The id of one of our files, if `url` is one."""
    prefix = f"{settings.public_base_url}{FILES_PATH}" if settings.public_base_url else None
    if prefix and url.startswith(prefix) and FILE_ID.match(url[len(prefix) :]):
        return url[len(prefix) :]
    return None


class DirectoryStore:
    """One file per image, its content type in the name's extension."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def _path(self, file_id: str) -> Path:
        if not FILE_ID.match(file_id):
            raise ValueError(f"not a file id: {file_id!r}")
        return self.directory / file_id

    async def put(self, file_id: str, data: bytes, content_type: str) -> None:
        path = self._path(file_id)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            partial.write_bytes(data)
            partial.replace(path)  # readers see the whole file or none

        await asyncio.to_thread(write)

    async def get(self, file_id: str) -> tuple[bytes, str] | None:
        if not FILE_ID.match(file_id):
            return None
        path = self._path(file_id)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None
        kind = {extension: content_type for content_type, extension in EXTENSIONS.items()}
        return data, kind[file_id.rsplit(".", 1)[1]]


class S3Store:
    """An S3-compatible bucket (AWS, MinIO, R2, ...) through aiobotocore."""

    def __init__(self, settings: Settings) -> None:
        try:
            from aiobotocore.session import get_session  # type: ignore[import-not-found]
        except ImportError:  # pragma: no cover - depends on the optional extra
            raise RuntimeError("FILES_S3_BUCKET needs aiobotocore: pip install 'luma-queue[s3]'") from None
        self._session: Any = get_session()
        self.bucket = settings.files_s3_bucket
        self._options = {
            "endpoint_url": settings.files_s3_endpoint or None,
            "region_name": settings.files_s3_region,
            "aws_access_key_id": settings.files_s3_access_key or None,
            "aws_secret_access_key": settings.files_s3_secret_key or None,
        }

    async def put(self, file_id: str, data: bytes, content_type: str) -> None:
        async with self._session.create_client("s3", **self._options) as client:
            await client.put_object(Bucket=self.bucket, Key=file_id, Body=data, ContentType=content_type)

    async def get(self, file_id: str) -> tuple[bytes, str] | None:
        if not FILE_ID.match(file_id):
            return None
        async with self._session.create_client("s3", **self._options) as client:
            try:
                answer = await client.get_object(Bucket=self.bucket, Key=file_id)
            except client.exceptions.NoSuchKey:
                return None
            async with answer["Body"] as body:
                data: bytes = await body.read()
            return data, str(answer.get("ContentType") or "application/octet-stream")


def file_store(settings: Settings) -> FileStore:
    """The store the settings name: a bucket when FILES_S3_BUCKET is set, else FILES_DIR."""
    if settings.files_s3_bucket:
        return S3Store(settings)
    return DirectoryStore(settings.files_dir)
