#!/usr/bin/env python3
"""A client of the Go Luma-API relay, written from that relay's README and routes only.

    python scripts/luma_relay_client.py http://127.0.0.1:8000 SECRET_TOKEN ["a prompt"]

What it relies on is what the relay documents: `POST /luma/generations/` with
`{"user_prompt", "aspect_ratio", "expand_prompt"}` and `Authorization: Bearer {SECRET_TOKEN}`
answers a task `{"created_at", "estimate_wait_seconds", "id", "liked", "prompt", "state":
"pending", "video": null}`; `GET /luma/generations/:task_id` is the task until its state is
"completed" with `video.url`; `GET /luma/generations/:task_id/download_video_url` gives `{url}`;
`GET /luma/subscription/usage` and `GET /luma/users/me` answer JSON objects. Standard library
only, so that it shares nothing with the gateway. Exits 0 when the video is there.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

POLL_SECONDS = 0.5
GIVE_UP_SECONDS = 120.0


def call(base: str, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        base.rstrip("/") + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as error:
        raise SystemExit(f"{method} {path}: {error.code} {error.read().decode(errors='replace')}") from None


def main(base: str, token: str, prompt: str) -> int:
    task = call(
        base,
        token,
        "POST",
        "/luma/generations/",
        {
            "user_prompt": prompt,
            "aspect_ratio": "16:9",
            "expand_prompt": True,
        },
    )
    for field in ("created_at", "estimate_wait_seconds", "id", "liked", "prompt", "state", "video"):
        if field not in task:
            raise SystemExit(f"the created task has no {field!r}: {task}")
    if task["state"] != "pending" or task["video"] is not None:
        raise SystemExit(f"a new task should be pending with no video: {task}")
    print(f"created {task['id']}: {task['state']}")
    deadline = time.monotonic() + GIVE_UP_SECONDS
    while task["state"] != "completed":
        if task["state"] == "failed" or time.monotonic() > deadline:
            raise SystemExit(f"the task did not complete: {task}")
        time.sleep(POLL_SECONDS)
        task = call(base, token, "GET", f"/luma/generations/{task['id']}")
    print(f"completed: {task['video']['url']}")
    link = call(base, token, "GET", f"/luma/generations/{task['id']}/download_video_url")
    print(f"download: {link['url']}")
    usage = call(base, token, "GET", "/luma/subscription/usage")
    me = call(base, token, "GET", "/luma/users/me")
    if not isinstance(usage, dict) or not isinstance(me, dict):
        raise SystemExit("usage and users/me must be objects")
    print("ok")
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    sys.exit(
        main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "a red fox running through snow")
    )
