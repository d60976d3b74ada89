"""Recovery: how long from a worker's SIGKILL to its generation moving again, at each fault point.

    python bench/recovery.py [--runs 10] [--points before_create after_create in_flight]

Each run is a fresh private stack (redis-server, the simulator and the api in-process) with the
production defaults for job timeouts and heartbeats, one account with one slot, and two workers:
one that SIGKILLs itself at the fault point and a survivor. One generation is created; when the
crashing worker took it and died, the time from its death to the generation's next transition in
the event log (a new create, or the adopted upstream id) is the recovery time. Runs where the
survivor happened to take the job are not counted and are run again. Fault points:

    before_create  killed after writing the intent, before the paid call: nothing was created,
                   and the reconcile must wait UPSTREAM_CREATE_TIMEOUT_SECONDS + 3 s to know it
    after_create   killed right after the upstream answered: the create is adopted from the list
    in_flight      killed while the upstream holds the create's answer: adopted from the list

Prints min / median / max per point, duplicates (prompts created upstream more than once) and lost
(generations not finished within a minute), then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from support.stack import Stack, Worker, machine, open_stack, wait_terminal, worker_env

from shared import keys
from shared.events import EventLog
from simulator.config import AccountSpec, SimulatorConfig

KEY = "bench-recovery-key"
POINTS = ("before_create", "after_create", "in_flight")
SETTINGS: dict[str, object] = {"LOG_LEVEL": "WARNING", "DEFAULT_GENERATION_SECONDS": 1}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10, help="counted kills per fault point")
    parser.add_argument("--points", nargs="+", choices=POINTS, default=list(POINTS))
    return parser.parse_args()


async def one_run(point: str, attempt: int) -> dict[str, Any] | None:
    """One kill at `point`; None when the survivor took the job and nothing was killed."""
    config = SimulatorConfig(
        pending_seconds=0.1,
        processing_seconds=0.5,
        accounts=[AccountSpec(name="sim-1", token="sim-token-1")],
        # in_flight: the upstream makes the generation but holds its answer past the create timeout.
        hang_after_create_seconds=30.0 if point == "in_flight" else 0.0,
    )
    with tempfile.TemporaryDirectory(prefix=f"recovery-{point}-") as tmp:
        directory = Path(tmp)
        async with open_stack(
            directory, config, {"sim-1": 1}, SETTINGS, workers=0, secret_keys=[KEY]
        ) as stack:
            pool = json.dumps(
                [{"name": "sim-1", "cookie": "access_token=sim-token-1", "base_url": stack.simulator.url}]
            )
            env = worker_env(stack.redis_url, pool, SETTINGS)
            # in_flight needs no switch: this worker is killed from here while its create hangs.
            crashing = Worker({**env, "FAULT_POINT": "" if point == "in_flight" else point}, directory, 0)
            survivor = Worker(env, directory, 1)
            stack.workers = [crashing, survivor]
            crashing.start()
            survivor.start()
            await stack.wait_ready()
            gen_id = await create(stack.api_url, f"recovery {point} {attempt}")
            killed = await crash(stack, crashing, gen_id, point)
            if killed is None:
                return None
            records, finished = await wait_terminal(stack.redis, [gen_id], time.monotonic() + 60)
            history = await EventLog(stack.redis).history(gen_id)
            moved = [event.at / 1000 for event in history if event.at / 1000 > killed]
            reports = Counter(report["prompt"] for report in stack.simulator.state.generation_reports())
            return {
                "recovery_seconds": round(moved[0] - killed, 3) if moved else None,
                "duplicates": sum(count > 1 for count in reports.values()),
                "lost": 0 if finished and records[gen_id].terminal else 1,
                "state": records[gen_id].state if gen_id in records else None,
            }


async def create(api_url: str, prompt: str) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{api_url}/api/generations/create", json={"prompt": prompt}, headers={"Secret-Key": KEY}
        ) as answer,
    ):
        body = await answer.json()
        gen_id: str = body["data"][0]["id"]
        return gen_id


async def runs_the_job(stack: Stack, worker: Worker, gen_id: str) -> bool:
    """Whether `worker` is the one running the generation's submit job (worker/liveness.py's sets)."""
    assert worker.process is not None
    for worker_id in await stack.redis.smembers(keys.WORKERS):
        if str(worker_id).split(":")[1] == str(worker.process.pid):
            return bool(await stack.redis.sismember(keys.worker_jobs(worker_id), keys.submit_job_id(gen_id)))
    return False


async def crash(stack: Stack, crashing: Worker, gen_id: str, point: str) -> float | None:
    """When the crashing worker died, or None if it was not the one that took the job."""
    assert crashing.process is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if point == "in_flight":
            # The create has reached the upstream and its answer is held: kill its worker now.
            if stack.simulator.state.generation_reports():
                if not await runs_the_job(stack, crashing, gen_id):
                    return None
                crashing.kill()
                return time.time()
        elif crashing.process.poll() is not None:
            return time.time()
        await asyncio.sleep(0.01)
    return None


def summary(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 2),
        "median": round(statistics.median(values), 2),
        "max": round(max(values), 2),
    }


async def main() -> None:
    args = parse_args()
    results: dict[str, Any] = {}
    for point in args.points:
        runs: list[dict[str, Any]] = []
        attempt = 0
        while len(runs) < args.runs and attempt < args.runs * 4:
            attempt += 1
            run = await one_run(point, attempt)
            if run is not None:
                runs.append(run)
                print(f"{point:<14} run {len(runs):>2}: {run}", flush=True)
        times = [run["recovery_seconds"] for run in runs if run["recovery_seconds"] is not None]
        results[point] = {
            "runs": len(runs),
            "recovery_seconds": summary(times) if times else None,
            "duplicates": sum(run["duplicates"] for run in runs),
            "lost": sum(run["lost"] for run in runs),
        }
    print()
    print(f"{'fault point':<14} {'runs':>4} {'min s':>7} {'median s':>9} {'max s':>7} {'dup':>4} {'lost':>5}")
    for point, result in results.items():
        seconds = result["recovery_seconds"] or {"min": "-", "median": "-", "max": "-"}
        print(
            f"{point:<14} {result['runs']:>4} {seconds['min']:>7} {seconds['median']:>9} "
            f"{seconds['max']:>7} {result['duplicates']:>4} {result['lost']:>5}"
        )
    print(json.dumps({"benchmark": "recovery", "machine": machine(), "results": results}))


if __name__ == "__main__":
    asyncio.run(main())
