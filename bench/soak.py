"""Soak: 1,000 generations through 2 workers that keep getting SIGKILLed, on a faulty upstream.

    python bench/soak.py [--generations 1000] [--kill-every 4] [--error-rate 0.05] [--skip-baseline]

Runs the same load twice on a fresh private stack each time (redis-server, the simulator and the
api in-process, worker processes): first fault-free (no kills, no faults) as the baseline, then with
a random worker SIGKILLed and restarted every --kill-every seconds (jittered) and random upstream
errors, slow answers and malformed bodies. For each run: lost generations (accepted but not
terminal at the end, or missing from Redis; must be 0), duplicate creates (prompts with more than
one upstream generation; must be 0), completed / failed and why, kills, time to finish; then the
faulty/baseline ratio and one JSON line with everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from support.stack import (
    Stack,
    log_events,
    machine,
    open_stack,
    run_benchmark,
    submit_all,
    upstream_requests,
    wait_terminal,
)

from shared.models import GenerationRecord
from simulator.config import AccountSpec, SimulatorConfig

KEY = "bench-soak-key"
NAMES = ["sim-1", "sim-2", "sim-3"]
SLOTS = 5
WORKER_SETTINGS: dict[str, object] = {
    # arq hands a dead worker's job on after the longest job timeout + 10 s.
    "SUBMIT_JOB_TIMEOUT_SECONDS": 5,
    "UPLOAD_TIMEOUT_SECONDS": 5,
    "UPSTREAM_TIMEOUT_SECONDS": 3,
    "LEASE_TTL_SECONDS": 5,
    "SWEEP_INTERVAL_SECONDS": 2,
    "POLL_MIN_INTERVAL_SECONDS": 0.1,
    "POLL_INTERVAL_SECONDS": 1,
    "DEFAULT_GENERATION_SECONDS": 0.6,
    "LOG_LEVEL": "WARNING",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--generations", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kill-every", type=float, default=4.0, help="mean seconds between SIGKILLs")
    parser.add_argument("--error-rate", type=float, default=0.05)
    parser.add_argument("--slow-rate", type=float, default=0.05)
    parser.add_argument("--slow-seconds", type=float, default=1.0)
    parser.add_argument("--malformed-rate", type=float, default=0.01)
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds per run before giving up")
    parser.add_argument("--submit-concurrency", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-baseline", action="store_true")
    return parser.parse_args()


async def killer(stack: Stack, every: float, rng: random.Random, kills: list[float]) -> None:
    """SIGKILL a random worker every `every` s (x0.5..1.5) and start it again at once."""
    while True:
        await asyncio.sleep(every * rng.uniform(0.5, 1.5))
        victim = rng.choice(stack.workers)
        victim.kill()
        kills.append(time.time())
        victim.start()


async def soak_run(args: argparse.Namespace, faulty: bool) -> dict[str, Any]:
    label = "faulty" if faulty else "baseline"
    config = SimulatorConfig(
        pending_seconds=0.1,
        processing_seconds=0.5,
        seed=args.seed,
        accounts=[AccountSpec(name=name, token=f"bench-token-{name}", capacity=2000) for name in NAMES],
    )
    tag = uuid.uuid4().hex[:8]
    jobs = [(KEY, f"soak {label} {tag} #{index}") for index in range(args.generations)]
    rng = random.Random(args.seed)
    kills: list[float] = []
    with tempfile.TemporaryDirectory(prefix=f"bench-soak-{label}-") as tmp:
        async with open_stack(
            Path(tmp),
            config,
            dict.fromkeys(NAMES, SLOTS),
            WORKER_SETTINGS,
            workers=args.workers,
            secret_keys=[KEY],
        ) as stack:
            await stack.wait_ready()
            if faulty:
                stack.simulator.state.update_config(
                    {
                        "error_rate": args.error_rate,
                        "slow_rate": args.slow_rate,
                        "slow_seconds": args.slow_seconds,
                        "malformed_rate": args.malformed_rate,
                    }
                )
            print(f"[{label}] stack ready; submitting {args.generations} generations", flush=True)
            kill_task = asyncio.create_task(killer(stack, args.kill_every, rng, kills)) if faulty else None
            shown = [time.monotonic()]

            def progress(records: dict[str, GenerationRecord]) -> None:
                if time.monotonic() - shown[0] >= 15:
                    shown[0] = time.monotonic()
                    states = Counter(record.state for record in records.values())
                    print(f"  [{label}] {time.strftime('%X')} {dict(states)}, kills {len(kills)}", flush=True)

            try:
                accepted = await submit_all(stack.api_url, jobs, args.submit_concurrency)
                records, all_terminal = await wait_terminal(
                    stack.redis, accepted.ids, args.deadline, interval=1.0, progress=progress
                )
            finally:
                if kill_task is not None:
                    kill_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await kill_task
            now = time.time()
            reports = stack.simulator.state.generation_reports()
            requests = upstream_requests(stack.simulator)
            peaks = {n: s["max_in_flight"] for n, s in stack.simulator.state.account_stats().items()}
            faults = dict(stack.simulator.state.faults_injected)
            cpu = stack.cpu()
            events = log_events(stack.directory)
            wall = now - stack.started

    ours = {record.upstream_id for record in records.values() if record.upstream_id}
    per_prompt = Counter(report["prompt"] for report in reports)
    missing = [gen_id for gen_id in accepted.ids if gen_id not in records]
    unfinished = [record for record in records.values() if not record.terminal]
    failed = [record for record in records.values() if record.state == "failed"]
    finish = [record.finished_ts for record in records.values() if record.finished_ts]
    first = min((record.created_ts for record in records.values()), default=accepted.first_accepted)
    return {
        "run": label,
        "accepted": len(accepted.ids),
        "rejected_by_api": dict(accepted.rejected),
        "all_terminal": all_terminal,
        "lost": len(missing) + len(unfinished),
        "lost_detail": {
            "missing_from_redis": len(missing),
            "not_terminal_by_phase": dict(Counter(record.phase.value for record in unfinished)),
        },
        "completed": sum(record.state == "completed" for record in records.values()),
        "failed": len(failed),
        "failure_reasons": dict(Counter(record.failure_reason for record in failed)),
        # Failed as "may have been created" although the upstream holds no generation of that prompt.
        "failed_but_never_created_upstream": sum(1 for record in failed if record.prompt not in per_prompt),
        "failure_messages": dict(Counter((record.failure_message or "")[:200] for record in failed)),
        "duplicate_creates": sum(1 for count in per_prompt.values() if count > 1),
        "upstream_generations": len(reports),
        "upstream_generations_not_ours": sum(1 for report in reports if report["id"] not in ours),
        "kills": len(kills),
        "time_to_finish_seconds": round(max(finish) - first, 1) if all_terminal and finish else None,
        "submit_attempts_histogram": dict(Counter(record.submit_attempts for record in records.values())),
        "max_in_flight": peaks,
        "faults_injected": faults,
        "upstream_requests": dict(requests),
        "upstream_requests_per_generation": round(
            sum(n for k, n in requests.items() if "non-2xx" not in k) / max(1, len(accepted.ids)), 3
        ),
        "worker_warnings": dict(events.most_common(12)),
        "cpu_seconds": cpu,
        "wall_seconds": round(wall, 1),
    }


def run_summary(run: dict[str, Any]) -> list[str]:
    return [
        f"[{run['run']}] accepted {run['accepted']}, lost {run['lost']} {run['lost_detail']}, "
        f"duplicate creates {run['duplicate_creates']}",
        f"  completed {run['completed']}, failed {run['failed']} {run['failure_reasons']} (never created "
        f"upstream: {run['failed_but_never_created_upstream']}), kills {run['kills']}, "
        f"time to finish {run['time_to_finish_seconds']} s",
        *(f"    failure x{count}: {message}" for message, count in run["failure_messages"].items()),
        f"  upstream generations {run['upstream_generations']} (not ours: "
        f"{run['upstream_generations_not_ours']}), max in flight {run['max_in_flight']}",
        f"  submit attempts {run['submit_attempts_histogram']}, faults injected {run['faults_injected']}",
        f"  upstream requests per generation {run['upstream_requests_per_generation']}: "
        f"{run['upstream_requests']}",
        f"  worker warnings {run['worker_warnings']}",
        f"  CPU seconds {run['cpu_seconds']} over {run['wall_seconds']} s wall",
    ]


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    runs = [] if args.skip_baseline else [await soak_run(args, faulty=False)]
    runs.append(await soak_run(args, faulty=True))
    result: dict[str, Any] = {
        "benchmark": "soak",
        "machine": machine(),
        "params": vars(args),
        "worker_settings": WORKER_SETTINGS,
        "runs": runs,
    }
    times = [run["time_to_finish_seconds"] for run in runs]
    if len(runs) == 2 and None not in times:
        result["faulty_over_baseline"] = round(times[1] / times[0], 2)
    result["targets"] = {f"{run['run']}: no lost generations": run["lost"] == 0 for run in runs} | {
        f"{run['run']}: no duplicate creates": run["duplicate_creates"] == 0 for run in runs
    }
    return result


def main() -> int:
    args = parse_args()
    result = run_benchmark(run_all(args))
    m = result["machine"]
    print(f"soak on {m['nproc']} x {m['cpu_model']}, Python {m['python']}, redis {m['redis']}, {m['date']}")
    for run in result["runs"]:
        print("\n".join(run_summary(run)))
    if "faulty_over_baseline" in result:
        print(f"  time to finish, faulty / baseline: {result['faulty_over_baseline']}")
    print(
        "\n".join(f"  target {name}: {'MET' if ok else 'MISSED'}" for name, ok in result["targets"].items())
    )
    print(json.dumps(result, sort_keys=True))
    return 0 if all(result["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
