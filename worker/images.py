"""External images: fetched by a worker and put where the account that runs the generation can
use them.

A create's `image`/`image_end` that is an http(s) URL not on Luma's CDN and not one of our
uploads is fetched here (shared/imagefetch.py: bounded, checked, public addresses only), then
uploaded to the web account that will run it, or, for an official account, kept in the
gateway's file store and named by its PUBLIC_BASE_URL/files/ URL (without PUBLIC_BASE_URL the
checked URL itself goes to Luma, which fetches public URLs). This happens before the paid
create: an image that cannot be had fails the generation `image_unreachable` and costs nothing.
"""

from __future__ import annotations

from shared import files, keys
from shared.accounts import Account
from shared.imagefetch import FetchedImage, ImageUnreachable, fetch_image, short_url
from shared.models import GenerationRecord
from worker.context import Deps


async def needs_fetch(deps: Deps, url: str) -> bool:
    """Whether a create's image URL must be fetched by us (not on Luma's CDN, not our upload)."""
    if any(url.startswith(prefix) for prefix in deps.settings.luma_cdn_prefixes):
        return False
    return not await deps.redis.exists(keys.upload_account(url))


async def place_images(deps: Deps, record: GenerationRecord, account: Account) -> dict[str, str]:
    """The record's images as the account will see them: `upstream_image(_end)` fields to set."""
    placed: dict[str, str] = {}
    for field, target in (("image", "upstream_image"), ("image_end", "upstream_image_end")):
        url = getattr(record, field)
        if not url:
            continue
        ours = files.file_id_of(deps.settings, url)
        if ours is None and not await needs_fetch(deps, url):
            continue
        if ours is not None and account.official:
            continue  # already at a public URL of ours
        image = await _read(deps, url, ours)
        placed[target] = await _put_for(deps, account, image, url)
    return placed


async def _read(deps: Deps, url: str, file_id: str | None) -> FetchedImage:
    if file_id is not None:
        kept = await deps.files.get(file_id)
        if kept is None:
            raise ImageUnreachable(f"{short_url(url)}: no such file")
        return FetchedImage(data=kept[0], content_type=kept[1])
    settings = deps.settings
    return await fetch_image(
        deps.fetch_session,
        url,
        max_bytes=settings.upload_max_bytes,
        within=settings.image_fetch_timeout_seconds,
        allow_private=settings.allow_private_networks,
    )


async def _put_for(deps: Deps, account: Account, image: FetchedImage, url: str) -> str:
    """Where the account takes the image from: an upload on a web account, our file for official."""
    if not account.official:
        extension = image.content_type.split("/")[1].replace("jpeg", "jpg")
        slot = await deps.provider(account).upload(image.data, image.content_type, f"image.{extension}")
        return slot.public_url
    if not deps.settings.public_base_url:
        return url  # checked to be a public image; Luma fetches it itself
    file_id = files.new_file_id(image.content_type)
    await deps.files.put(file_id, image.data, image.content_type)
    return files.public_url(deps.settings, file_id)
