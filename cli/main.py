"""`luma-queue`: the one command that starts each part of the gateway.

Each subcommand imports its part only when it runs, so `--help` works even without the rest and
starting one process does not load the others' code.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.settings import Settings

DESCRIPTION = """\
Self-hosted gateway for Luma Dream Machine video generation: an HTTP api and workers that share
one Redis and keep a pool of Luma accounts busy without overdrawing them.

Configuration comes from the environment (or a .env file in the current directory), e.g. REDIS_URL,
API_HOST, API_PORT, SECRET_KEY, LUMA_ACCOUNTS or ACCESS_TOKEN. See README.md.
"""

EPILOG = """\
To try everything on one machine without a Luma account: luma-queue dev
"""


# What a setting pydantic-settings reads as JSON must look like, for its "is not JSON" line.
JSON_SETTINGS = {
    "luma_accounts": 'a JSON list of accounts, e.g. [{"name": "main", "cookie": "access_token=..."}]',
    "official_prices": 'a JSON object of prices in cents, e.g. {"ray-2:720p:5s": 65}',
}


def load_settings() -> Settings:
    """Settings from the environment; each bad one is reported in one readable line, no traceback."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from shared.settings import Settings

    try:
        return Settings()
    except (ValidationError, SettingsError) as exc:
        raise SystemExit("\n".join(f"luma-queue: {problem}" for problem in setting_problems(exc))) from None


def setting_problems(exc: Exception) -> list[str]:
    """One line per bad setting, naming its variable and what was expected, never its value
    (values can be cookies or keys)."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        # pydantic-settings could not decode a JSON-valued variable; its message names the field.
        match = re.search(r'field "(\w+)"', str(exc))
        if match is None:
            return [f"invalid configuration: {exc}"]
        name = match.group(1)
        expected = JSON_SETTINGS.get(name, "JSON")
        return [f"{name.upper()} is not valid JSON; expected {expected} (from the environment or ./.env)"]
    problems = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        location = error["loc"]
        message = error["msg"].removeprefix("Value error, ")
        if not location:  # a rule over several settings: its message names them
            problems.append(f"invalid configuration: {message}")
            continue
        variable = str(location[0]).upper()
        inside = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location[1:])
        problems.append(f"{variable}{inside}: {message} (from the environment or ./.env)")
    return problems


def cmd_api(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.processes is not None:
        settings = settings.model_copy(update={"api_processes": args.processes})
    from api.app import run

    return run(settings)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def cmd_worker(args: argparse.Namespace) -> int:
    settings = load_settings()
    from worker.main import run

    return run(settings)


# Simulator flags that map one to one onto SimulatorConfig fields; unset ones keep its defaults.
SIMULATOR_KNOBS: tuple[tuple[str, Callable[[str], float], str, str], ...] = (
    ("pending_seconds", float, "SECONDS", "how long a new generation stays `pending` (Luma's own queue)"),
    ("processing_seconds", float, "SECONDS", "how long it then renders in `processing`"),
    ("failure_rate", float, "RATE", "share of generations that end `failed` (0..1)"),
    ("error_rate", float, "RATE", "share of API requests answered with an error (0..1)"),
    ("slow_rate", float, "RATE", "share of API requests delayed by --slow-seconds (0..1)"),
    ("slow_seconds", float, "SECONDS", "delay of a slow request"),
    ("malformed_rate", float, "RATE", "share of API responses with a malformed body (0..1)"),
    ("missing_url_seconds", float, "SECONDS", "how long a `completed` generation lacks its video URL"),
    ("seed", int, "INT", "seed of the simulator's random draws, for repeatable runs"),
)


def cmd_simulator(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from simulator.app import run
    from simulator.config import SimulatorConfig

    knobs: dict[str, Any] = {
        name: getattr(args, name) for name, *_ in SIMULATOR_KNOBS if getattr(args, name) is not None
    }
    if args.media_dir is not None:
        knobs["media_dir"] = args.media_dir
    try:
        config = SimulatorConfig.model_validate(knobs)
    except ValidationError as exc:
        raise SystemExit(f"luma-queue simulator: invalid option: {exc}") from None
    run(args.host, args.port, config)
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    settings = load_settings()
    from cli.dev import run

    return run(args, settings)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("luma-queue")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed: make install)"


# What `api --help` and `worker --help` say about the settings that matter most.
API_SETTINGS = """settings that matter (environment or ./.env; all of them: .env.example):
  SECRET_KEY      callers' keys, comma separated; empty: open to anyone (refused on a
                  non-loopback API_HOST unless ALLOW_OPEN_API=true)
  ADMIN_KEY       the operator's key for /api/admin/*; empty: admin API off
  REDIS_URL       redis://HOST:6379/0 (or rediss://, unix://); default redis://127.0.0.1:6379/0
  API_HOST, API_PORT   where to listen; default 127.0.0.1:8000
  LUMA_ACCOUNTS   the account pool (JSON list); the api reads it to list them, the worker uses them
"""

WORKER_SETTINGS = """settings that matter (environment or ./.env; all of them: .env.example):
  LUMA_ACCOUNTS   the account pool, a JSON list, e.g.
                  '[{"name": "main", "cookie": "access_token=eyJ...", "max_concurrency": 3}]'
  ACCESS_TOKEN    or a single account's cookie, as in the original proxy
  REDIS_URL       the same Redis as the api: redis://HOST:6379/0 (or rediss://, unix://)
  SECRET_KEY, ADMIN_KEY   not read by the worker: they are the api's
"""


def cmd_batch(args: argparse.Namespace) -> int:
    from cli.batch import run_batch

    return run_batch(args)


def cmd_status(args: argparse.Namespace) -> int:
    from cli.batch import run_status

    return run_status(args)


def cmd_download(args: argparse.Namespace) -> int:
    from cli.batch import run_download

    return run_download(args)


def add_gateway_options(parser: argparse.ArgumentParser) -> None:
    """Where the gateway is and the key to call it with: the client commands' common options."""
    parser.add_argument(
        "--url",
        default=os.environ.get("LUMA_QUEUE_URL") or "http://127.0.0.1:8000",
        help="the gateway's address (default: LUMA_QUEUE_URL, else http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--key",
        default=os.environ.get("LUMA_QUEUE_KEY"),
        help="your Secret-Key (default: LUMA_QUEUE_KEY); it is never printed",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the summary")


BATCH_DESCRIPTION = """\
Submit every prompt of PROMPTS to the gateway, follow them, and download each video as it
completes, to OUT/<line>-<slug>.mp4. OUT/manifest.jsonl records every line's generation: run
the same command again (after Ctrl-C, a crash, or an edit of the file) and it goes on where it
stopped, without making any line twice.

PROMPTS is a .txt file (one prompt per line; blank lines and lines starting with # are skipped),
a .jsonl file (one object per line: prompt, and optionally image, image_end, aspect_ratio, loop,
expand_prompt, name), a .csv file whose header names those columns, or - for a .txt-style list
on standard input. An image is an http(s) URL or a local file (uploaded once).

Exit status: 0 every line completed (and downloaded), 1 some failed (listed), 2 a usage error,
130 interrupted.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="luma-queue",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")

    api = commands.add_parser(
        "api",
        help="serve the HTTP api (create, list, detail, usage, upload)",
        description="Serve the HTTP api on API_HOST:API_PORT. It validates and queues requests and "
        "answers reads from Redis; it never calls Luma itself. Run as many copies as you like.",
        epilog=API_SETTINGS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    api.add_argument(
        "--processes",
        type=positive_int,
        metavar="N",
        help="serve from N processes on the one port, for N cores (default: API_PROCESSES, 1)",
    )
    api.set_defaults(handler=cmd_api)

    worker = commands.add_parser(
        "worker",
        help="run a worker: submit to the Luma accounts, poll to the end, upload images",
        description="Run a worker: the only process that talks to the Luma accounts (LUMA_ACCOUNTS "
        "or ACCESS_TOKEN). It submits queued generations within each account's limits, polls them "
        "to the end and puts uploaded images on an account. Any number of workers may share one Redis.",
        epilog=WORKER_SETTINGS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker.set_defaults(handler=cmd_worker)

    simulator = commands.add_parser(
        "simulator",
        help="run a local fake of the Luma web API, for development and tests",
        description="Run a local fake of the Luma web API with knobs for timing and faults. Its "
        "accounts are sim-1 and sim-2 (cookies access_token=sim-token-1 and access_token=sim-token-2). "
        "Options left out keep the simulator's defaults.",
    )
    simulator.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    simulator.add_argument("--port", type=int, default=8100, help="port to listen on (default: %(default)s)")
    from simulator.config import SimulatorConfig

    for name, kind, metavar, text in SIMULATOR_KNOBS:
        default = SimulatorConfig.model_fields[name].default
        simulator.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind,
            metavar=metavar,
            help=f"{text} (default: {default:g})",
        )
    simulator.add_argument(
        "--media-dir",
        metavar="DIR",
        help="keep uploads and videos here so their URLs still answer after a restart "
        "(default: in memory only; `luma-queue dev` uses .run/simulator)",
    )
    simulator.set_defaults(handler=cmd_simulator)

    dev = commands.add_parser(
        "dev",
        help="run the whole stack on this machine (redis, simulator, api, worker); Ctrl-C stops it",
        description="Run the whole stack on this machine, one command, stopped by Ctrl-C: a private "
        "redis-server (data in ./.run/redis) unless REDIS_URL is set, the simulator unless "
        "LUMA_ACCOUNTS or ACCESS_TOKEN is set, the api and one worker. Their output is shown here "
        "prefixed with their name and kept in ./.run/logs/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    dev.add_argument("--redis-port", type=int, default=6390, help="port of the private redis-server")
    dev.add_argument("--simulator-port", type=int, default=8100, help="port of the simulator")
    dev.add_argument(
        "--sim-pending-seconds",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how long a simulated generation waits in Luma's queue",
    )
    dev.add_argument(
        "--sim-processing-seconds",
        type=float,
        default=8.0,
        metavar="SECONDS",
        help="how long it then renders (the two together: how long a generation takes)",
    )
    dev.add_argument(
        "--stop-timeout",
        type=float,
        default=20.0,
        help="seconds each process gets to stop after SIGTERM before it is killed",
    )
    dev.set_defaults(handler=cmd_dev)

    batch = commands.add_parser(
        "batch",
        help="a file of prompts in, a folder of videos out: submit, follow, download, resume",
        description=BATCH_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    batch.add_argument("prompts", metavar="PROMPTS", help="a .txt, .jsonl or .csv file, or - (stdin)")
    add_gateway_options(batch)
    batch.add_argument("--out", default="./luma-videos", help="folder for the videos (default: %(default)s)")
    batch.add_argument("--no-wait", action="store_true", help="submit, print the batch id and exit")
    batch.add_argument("--no-download", action="store_true", help="follow the generations, download nothing")
    batch.add_argument(
        "--retry-failed",
        action="store_true",
        help="make the lines that failed in an earlier run again (each is paid again)",
    )
    batch.add_argument(
        "--chunk-size",
        type=positive_int,
        default=100,
        metavar="N",
        help="lines per batch request (default: %(default)s; smaller if the gateway says so)",
    )
    batch.add_argument(
        "--parallel-downloads",
        type=positive_int,
        default=4,
        metavar="N",
        help="videos downloaded at once (default: %(default)s)",
    )
    batch.set_defaults(handler=cmd_batch)

    status = commands.add_parser(
        "status",
        help="a batch's generations counted by state, and its failures",
        description="Print each batch's generations counted by state, and the reason of each failed one.",
    )
    status.add_argument("batch_ids", nargs="+", metavar="BATCH_ID")
    add_gateway_options(status)
    status.set_defaults(handler=cmd_status)

    download = commands.add_parser(
        "download",
        help="download the videos a batch has finished",
        description="Download every completed video of the batches into DIR (files already there are "
        "kept). With the batch's manifest.jsonl in DIR, files are named as `batch` names them.",
    )
    download.add_argument("batch_ids", nargs="+", metavar="BATCH_ID")
    add_gateway_options(download)
    download.add_argument("--out", default="./luma-videos", metavar="DIR", help="(default: %(default)s)")
    download.set_defaults(handler=cmd_download)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
