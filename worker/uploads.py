"""The upload job: sign an upload on an account, put the bytes there, then answer.

The seed only signed and never uploaded, so its `public_url` could point at nothing. Here the api
answers only once the bytes are in place, and remembers which account holds the image so that a
generation using it runs on that account.
"""

from __future__ import annotations

from typing import Any

import structlog

from shared import keys
from shared.accounts import Account
from shared.models import UploadResult
from worker.context import Deps, deps_of
from worker.luma import AccountExpired, LumaError, RateLimited

log = structlog.get_logger(__name__)


async def upload(ctx: dict[str, Any], upload_id: str, content_type: str, filename: str) -> dict[str, Any]:
    """arq job: returns an UploadResult as a dict (errors included, so the api can explain them)."""
    deps = deps_of(ctx)
    data = await deps.arq.get(keys.upload_bytes(upload_id))
    if data is None:
        return UploadResult(
            error="the upload expired before a worker took it", error_code="upload_expired"
        ).model_dump()
    last_error = "no Luma account can take uploads right now"
    for account in await _candidates(deps):
        try:
            result = await _upload_to(deps, account, data, content_type, filename)
        except AccountExpired as error:
            await deps.account_expired(account.name, str(error))
            last_error = f"account {account.name} expired"
            continue
        except RateLimited as error:
            await deps.upstream_fault(account.name, pause_seconds=error.retry_after)
            last_error = "the upstream is rate limiting uploads"
            continue
        except LumaError as error:
            await deps.upstream_fault(account.name)
            log.warning("upload_failed", account=account.name, error=str(error))
            last_error = f"the upstream failed the upload: {error}"
            continue
        await deps.arq.delete(keys.upload_bytes(upload_id))
        return result.model_dump()
    return UploadResult(error=last_error, error_code="no_account_available").model_dump()


async def _candidates(deps: Deps) -> list[Account]:
    """Healthy accounts, the one with the most free slots first (its generations will follow)."""
    accounts = [account for account in await deps.registry.all() if account.usable]
    flights = await deps.registry.in_flight([account.name for account in accounts])
    return sorted(accounts, key=lambda account: flights[account.name] - account.max_concurrency)


async def _upload_to(
    deps: Deps, account: Account, data: bytes, content_type: str, filename: str
) -> UploadResult:
    client = deps.client(account)
    signed = await client.sign_upload(filename or "file.jpg")
    await client.put_upload(str(signed["presigned_url"]), data, content_type)
    public_url = str(signed["public_url"])
    await deps.redis.set(keys.upload_account(public_url), account.name, ex=keys.UPLOAD_ACCOUNT_TTL_SECONDS)
    log.info("upload_stored", account=account.name, upload_id=signed.get("id"))
    return UploadResult(
        id=str(signed["id"]),
        presigned_url=str(signed["presigned_url"]),
        public_url=public_url,
        account=account.name,
    )
