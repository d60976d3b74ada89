"""Every curl example in README.md, taken from the file itself, run against `luma-queue dev`.

The stack is the one a newcomer gets (real redis-server, simulator, api and worker processes), on
free ports; the examples run in README order from the repository's directory, with the README's
ports swapped for those and its placeholders (GENERATION_ID, PUBLIC_URL, ...) for what earlier
examples answered. Each must answer 2xx, or fail exactly as the README says it may.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cli.ports import free_ports

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
API = "http://127.0.0.1:8000"
SIMULATOR = "http://127.0.0.1:8100"
SETTINGS_VARIABLES = (
    "REDIS_URL",
    "LUMA_ACCOUNTS",
    "ACCESS_TOKEN",
    "SECRET_KEY",
    "ADMIN_KEY",
    "API_PORT",
    "API_HOST",
)
STATUS_MARK = "\n__status__"
STREAM_SECONDS = 3

# What the README says an example may answer instead of 2xx, by a pattern of the command.
ALLOWED_REFUSALS: list[tuple[re.Pattern[str], set[tuple[int, str]]]] = [
    # "Once the create may have reached Luma it is 409 already_submitted; a finished one is 409
    # already_finished"
    (re.compile(r"/cancel\b"), {(409, "already_submitted"), (409, "already_finished")}),
    # "409 nothing_to_redeliver before its first webhook was queued"
    (re.compile(r"/redeliver\b"), {(409, "nothing_to_redeliver")}),
    # "DELETE answers 409 account_busy while the account has generations in flight"
    (re.compile(r"-X DELETE"), {(409, "account_busy")}),
]


def curl_examples(text: str) -> list[str]:
    """Every curl command of the README's ```sh blocks, continuation lines joined, in order."""
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [line.strip() for line in joined.splitlines() if line.strip().startswith("curl ")]
    return commands


def test_the_readme_has_curl_examples_of_each_section() -> None:
    """The extraction finds the examples (so the test below cannot pass by finding none)."""
    examples = curl_examples(README.read_text())
    assert len(examples) >= 25, examples
    assert all(" -sS" in example.split("http")[0] for example in examples), "use -sS in every example"


@dataclass
class Answers:
    """What earlier examples answered, to fill the placeholders of later ones."""

    created: list[str] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=lambda: {"KEY": "any-key-in-open-mode"})

    def note(self, body: Any) -> None:
        if not isinstance(body, dict):
            return
        data = body.get("data")
        if isinstance(body.get("batch_id"), str):
            self.values["BATCH_ID"] = body["batch_id"]
        if isinstance(data, list) and body.get("message") == "Success":
            self.created += [item["id"] for item in data]
        if isinstance(data, dict) and "public_url" in data:
            self.values["PUBLIC_URL"] = data["public_url"]
        if isinstance(data, list) and data and isinstance(data[0], dict) and "overridden" in data[0]:
            self.values["HOLDER_ID"] = data[0]["owner"]

    def fill(self, command: str) -> str:
        values = dict(self.values)
        if self.created:
            values["GENERATION_ID"] = self.created[-1]
            values.update({f"ID{n}": gen_id for n, gen_id in enumerate(reversed(self.created[-3:]), 1)})
        for name, value in values.items():
            command = re.sub(rf"\b{name}\b", value, command)
        missing = re.findall(r"\b(?:GENERATION_ID|PUBLIC_URL|BATCH_ID|HOLDER_ID|ID\d)\b", command)
        assert not missing, f"no earlier example answered {missing} for: {command}"
        return command


class DevStack:
    """`luma-queue dev` in a temp directory, on free ports, with a quick simulator."""

    def __init__(self, cwd: Path) -> None:
        redis_port, self.simulator_port, self.api_port, worker_metrics_port = free_ports(4)
        self.output_path = cwd / "dev.out"
        env = {name: value for name, value in os.environ.items() if name not in SETTINGS_VARIABLES}
        with self.output_path.open("wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "dev", "--redis-port", str(redis_port),
                 "--simulator-port", str(self.simulator_port), "--sim-pending-seconds", "0.5",
                 "--sim-processing-seconds", "1", "--stop-timeout", "10"],
                cwd=cwd,
                # The worker's metrics on a free port too: `make dev`'s 9100 may be another stack's.
                env={
                    **env,
                    "API_PORT": str(self.api_port),
                    "WORKER_METRICS_PORT": str(worker_metrics_port),
                    "PYTHONPATH": str(ROOT),
                },
                stdout=output,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def wait_until_running(self, within: float = 90) -> None:
        deadline = time.monotonic() + within
        while "luma-queue is running at" not in self.output():
            assert self.process.poll() is None, f"luma-queue dev exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"luma-queue dev not up within {within}s:\n{self.output()}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def dev_stack(tmp_path: Path) -> Iterator[DevStack]:
    stack = DevStack(tmp_path)
    try:
        stack.wait_until_running()
        yield stack
    finally:
        stack.stop()


def run(command: str, stack: DevStack) -> tuple[int, int | None, str]:
    """(curl's exit code, the HTTP status, the body) of one example, from the repository's directory."""
    command = command.replace(API, f"http://127.0.0.1:{stack.api_port}")
    command = command.replace(SIMULATOR, f"http://127.0.0.1:{stack.simulator_port}")
    streaming = " -sSN " in command
    extra = f"--max-time {STREAM_SECONDS}" if streaming else f"-w '{STATUS_MARK}%{{http_code}}'"
    command = command.replace("curl ", f"curl {extra} ", 1)
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=60)
    body, _, status = result.stdout.rpartition(STATUS_MARK)
    if streaming:
        return result.returncode, None, result.stdout
    return result.returncode, int(status) if status.isdigit() else None, body or result.stderr


def test_every_curl_example_in_the_readme_works_against_make_dev(dev_stack: DevStack) -> None:
    """In README order: each example answers 2xx, or is refused as the README says it may be."""
    assert shutil.which("curl"), "the README's examples need curl (.ci/run installs it)"
    answers = Answers()
    for example in curl_examples(README.read_text()):
        command = answers.fill(example)
        code, status, body = run(command, dev_stack)
        if status is None:  # the live event stream: it runs until curl's --max-time
            assert code == 28 and ": connected" in body, (example, code, body)
            continue
        assert code == 0, (example, code, body)
        answer = json.loads(body) if body.strip() else None
        if not 200 <= status < 300:
            allowed = next((codes for pattern, codes in ALLOWED_REFUSALS if pattern.search(example)), set())
            refused = (status, answer.get("code") if isinstance(answer, dict) else None)
            assert refused in allowed, (example, status, body)
        answers.note(answer)
        if "/api/generations/create" in example and "PUBLIC_URL" in example:
            # The create from the uploaded image runs to the end, on the account that holds it.
            _wait_for_the_end(dev_stack, answers.created[-1])


def _wait_for_the_end(stack: DevStack, gen_id: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while True:
        _, _, body = run(f"curl -sS {API}/api/generations/{gen_id}", stack)
        state = json.loads(body)["data"]["state"]
        if state in ("completed", "failed"):
            assert state == "completed", body
            return
        assert time.monotonic() < deadline, body
        time.sleep(0.3)
