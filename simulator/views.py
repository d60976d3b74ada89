"""The JSON shapes Luma answers with, built from simulator records at a given instant."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from simulator.models import Account, Generation, Upload
from simulator.schemas import ASPECT_RATIOS

PLANS: list[dict[str, Any]] = [
    {
        "name": "Free",
        "key": "free",
        "capacity_per_month": 30,
        "monthly_cost_in_cents": 0.0,
        "yearly_cost_in_cents": 0.0,
    },
    {
        "name": "Standard",
        "key": "standard",
        "capacity_per_month": 150,
        "monthly_cost_in_cents": 2999.0,
        "yearly_cost_in_cents": 28788.0,
    },
    {
        "name": "Pro",
        "key": "pro",
        "capacity_per_month": 430,
        "monthly_cost_in_cents": 9999.0,
        "yearly_cost_in_cents": 95988.0,
    },
    {
        "name": "Premier",
        "key": "premier",
        "capacity_per_month": 2030,
        "monthly_cost_in_cents": 49999.0,
        "yearly_cost_in_cents": 479988.0,
    },
]


def iso_utc(t: float) -> str:
    """Luma's timestamp format: `2024-06-20T06:02:26.278000Z`."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def media_url(base: str, generation_id: str, name: str) -> str:
    return f"{base}/_media/{generation_id}/{name}"


def generation_json(generation: Generation, t: float, base: str) -> dict[str, Any]:
    state = generation.state_at(t)
    width, height = ASPECT_RATIOS.get(generation.aspect_ratio, ASPECT_RATIOS["16:9"])
    video: dict[str, Any] | None = None
    thumbnail: dict[str, Any] | None = None
    last_frame: dict[str, Any] | None = None
    if generation.video_ready_at(t):
        thumbnail_url = media_url(base, generation.id, "thumbnail.jpg")
        video = {
            "url": media_url(base, generation.id, "video.mp4"),
            "width": width,
            "height": height,
            "thumbnail": thumbnail_url,
            "download_url": media_url(base, generation.id, "download.mp4"),
        }
        thumbnail = {"url": thumbnail_url, "width": width, "height": height}
        last_frame = {
            "url": media_url(base, generation.id, "last_frame.jpg"),
            "width": width,
            "height": height,
        }
    return {
        "id": generation.id,
        "prompt": generation.prompt,
        "state": state,
        "created_at": iso_utc(generation.created_at),
        "video": video,
        "liked": None,
        "estimate_wait_seconds": round(generation.processing_at - t, 1) if state == "pending" else None,
        "thumbnail": thumbnail,
        "last_frame": last_frame,
        # Luma's web API has no fixed field for why; this one says an image was missing (one
        # that was never uploaded, or that the simulator no longer has), so clients can tell.
        **(
            {"failure_reason": generation.failure_reason}
            if state == "failed" and (generation.failure_reason or "").startswith("image not found")
            else {}
        ),
        # Not in every observed object; present so clients prove they tolerate extra fields.
        "request": {
            "user_prompt": generation.prompt,
            "aspect_ratio": generation.aspect_ratio,
            "expand_prompt": generation.expand_prompt,
            "loop": generation.loop,
            "image_url": generation.image_url,
            "image_end_url": generation.image_end_url,
        },
    }


def usage_json(account: Account) -> dict[str, Any]:
    return {
        "consumed": account.consumed,
        "capacity": account.capacity,
        "available": account.available,
        "subscription": {"active": True, "plan": account.plan, "type": "monthly"},
        "plans": PLANS,
    }


def user_json(account: Account) -> dict[str, Any]:
    return {
        "id": account.user_id,
        "email": f"{account.name}@simulator.invalid",
        "name": account.name,
        "display_name": account.name,
        "avatar": None,
        "plan": account.plan,
    }


def upload_json(upload: Upload, base: str, expires_seconds: float) -> dict[str, Any]:
    return {
        "id": upload.id,
        # Shaped like an S3 presigned URL; only the signature is checked.
        "presigned_url": (
            f"{base}/_storage/upload/{upload.id}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Expires={int(expires_seconds)}&X-Amz-Signature={upload.signature}"
        ),
        "public_url": f"{base}/_storage/public/{upload.id}/{upload.filename}",
    }
