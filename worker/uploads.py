"""The upload job: sign an upload on an account, put the bytes there, then answer.

The seed only signed and never uploaded, so its `public_url` could point at nothing. Here the api
answers only once the bytes are in place, and remembers which account holds the image so that a
generation using it runs on that account.
"""

from __future__ import annotations

from typing import Any

import structlog

from shared import files, keys
from shared.accounts import Account
from shared.health import Problem
from shared.models import UploadResult
from worker.context import Deps, deps_of
from worker.upstream.errors import LumaError

log = structlog.get_logger(__name__)


async def upload(ctx: dict[str, Any], upload_id: str, content_type: str, filename: str) -> dict[str, Any]:
    """arq job: returns an UploadResult as a dict (errors included, so the api can explain them)."""
    deps = deps_of(ctx)
    data = await deps.arq.get(keys.upload_bytes(upload_id))
    if data is None:
        return UploadResult(
            error="the upload expired before a worker took it", error_code="upload_expired"
        ).model_dump()
    candidates = await _candidates(deps)
    if not candidates and await _only_official(deps):
        return (await _keep(deps, upload_id, data, content_type)).model_dump()
    last_error = "no Luma account can take uploads right now"
    for account in candidates:
        try:
            result = await _upload_to(deps, account, data, content_type, filename)
        except LumaError as error:
            await deps.upstream_failed(account.name, error)
            log.warning("upload_failed", account=account.name, error=str(error))
            last_error = _why(account, error)
            continue
        await deps.arq.delete(keys.upload_bytes(upload_id))
        return result.model_dump()
    return UploadResult(error=last_error, error_code="no_account_available").model_dump()


async def _only_official(deps: Deps) -> bool:
    """No web account could take the upload, and official ones could run its generation."""
    return any(account.official and account.usable for account in await deps.registry.all())


async def _keep(deps: Deps, upload_id: str, data: bytes, content_type: str) -> UploadResult:
    """The official API has no upload: the gateway keeps the image and serves it to Luma itself."""
    if not deps.settings.public_base_url:
        return UploadResult(
            error="only official accounts can take work, and they fetch images from public URLs: "
            "set PUBLIC_BASE_URL so that the gateway can serve uploads to them",
            error_code="no_account_available",
        )
    file_id = files.new_file_id(content_type)
    await deps.files.put(file_id, data, content_type)
    await deps.arq.delete(keys.upload_bytes(upload_id))
    url = files.public_url(deps.settings, file_id)
    log.info("upload_kept", file_id=file_id)
    # There is no presigned URL: the file is already in place.
    return UploadResult(id=file_id, presigned_url=url, public_url=url, account=None)


async def _candidates(deps: Deps) -> list[Account]:
    """Healthy web accounts (the official API has no upload), the one with the most free slots
    first (its generations will follow)."""
    accounts = [account for account in await deps.registry.all() if account.usable and not account.official]
    flights = await deps.registry.in_flight([account.name for account in accounts])
    return sorted(accounts, key=lambda account: flights[account.name] - account.max_concurrency)


async def _upload_to(
    deps: Deps, account: Account, data: bytes, content_type: str, filename: str
) -> UploadResult:
    slot = await deps.provider(account).upload(data, content_type, filename)
    await deps.redis.set(
        keys.upload_account(slot.public_url), account.name, ex=keys.UPLOAD_ACCOUNT_TTL_SECONDS
    )
    log.info("upload_stored", account=account.name, upload_id=slot.id)
    return UploadResult(
        id=slot.id, presigned_url=slot.presigned_url, public_url=slot.public_url, account=account.name
    )


def _why(account: Account, error: LumaError) -> str:
    """What the caller is told when the last account tried failed the upload."""
    if error.problem is Problem.EXPIRED:
        return f"account {account.name} expired"
    if error.problem is Problem.RATE_LIMITED:
        return "the upstream is rate limiting uploads"
    return f"the upstream failed the upload: {error}"
