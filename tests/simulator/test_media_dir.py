"""`luma-queue simulator --media-dir`: what it handed out still answers after the process restarts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cli.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
COOKIE = "access_token=sim-token-1"
API = "/api/photon/v1"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Simulator:
    """The simulator as `luma-queue dev` runs it: a process with a media directory."""

    def __init__(self, media_dir: Path) -> None:
        self.port = free_port()
        self.media_dir = media_dir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "simulator", "--port", str(self.port),
             "--pending-seconds", "0", "--processing-seconds", "0.2", "--media-dir", str(self.media_dir)],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                self.status("GET", "/_sim/config")
                return
            except OSError:
                assert self.process.poll() is None, "the simulator exited"
                assert time.monotonic() < deadline, "the simulator did not answer within 30 s"
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def call(self, method: str, url: str, body: bytes | None = None, **headers: str) -> tuple[int, bytes]:
        full = url if url.startswith("http") else self.base + url
        request = urllib.request.Request(full, method=method, data=body, headers=headers)
        try:
            with NO_PROXY.open(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def status(self, method: str, url: str) -> int:
        return self.call(method, url)[0]

    def json(self, method: str, url: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        status, raw = self.call(method, url, data, Cookie=COOKIE, **{"Content-Type": "application/json"})
        assert status < 300, (status, raw)
        return json.loads(raw)


def test_uploads_and_videos_still_answer_after_a_restart(tmp_path: Path) -> None:
    """An uploaded image's public URL and a completed generation's video URL answer 200 after
    the simulator is killed and started again on the same media directory."""
    simulator = Simulator(tmp_path / "media")
    simulator.start()
    try:
        signed = simulator.json("POST", f"{API}/generations/file_upload?file_type=image&filename=fox.png")
        image = (ROOT / "examples" / "fox.png").read_bytes()
        put, _ = simulator.call("PUT", signed["presigned_url"], image, **{"Content-Type": "image/png"})
        assert put == 200
        [created] = simulator.json(
            "POST", f"{API}/generations/", {"user_prompt": "a fox", "image_url": signed["public_url"]}
        )
        deadline = time.monotonic() + 30
        while not (video := simulator.json("GET", f"{API}/generations/{created['id']}").get("video")):
            assert time.monotonic() < deadline, "the generation did not complete"
            time.sleep(0.1)
        urls = [signed["public_url"], video["url"]]
        assert [simulator.status("GET", url) for url in urls] == [200, 200]

        simulator.stop()
        simulator.start()

        assert [simulator.status("GET", url) for url in urls] == [200, 200]
        assert simulator.call("GET", signed["public_url"])[1] == image
        # A new create can still start from the image uploaded before the restart.
        [again] = simulator.json(
            "POST", f"{API}/generations/", {"user_prompt": "again", "image_url": signed["public_url"]}
        )
        while (state := simulator.json("GET", f"{API}/generations/{again['id']}")["state"]) != "completed":
            assert state != "failed" and time.monotonic() < deadline + 30, state
            time.sleep(0.1)
        missing = signed["public_url"].replace(signed["id"], "00000000-0000-0000-0000-000000000000")
        assert simulator.status("GET", missing) == 404
    finally:
        simulator.stop()
