"""The state machine on a real Redis: random moves, races and fences, checked against a model each step."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from typing import Any

import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from redis.asyncio import Redis

from shared import keys
from shared.events import EventLog
from shared.models import CreateRequest, GenerationRecord
from shared.states import PUBLIC_STATE, PUBLIC_STATES, TRANSITIONS, Phase
from shared.store import GenerationStore, Outcome

OWNERS = ("alice", "bob")
BATCH = "batch-1"
phases = st.sampled_from(list(Phase))


class TransitionMachine(RuleBasedStateMachine):
    """A model of what each generation's phase must be, and of how many events it must have."""

    generations = Bundle("generations")

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.sync = redis.Redis.from_url(url, decode_responses=True)
        self.sync.flushall()
        self.clients = [Redis.from_url(url, decode_responses=True) for _ in range(2)]
        self.stores = [
            GenerationStore(client, retention_seconds=3600, default_generation_seconds=10)
            for client in self.clients
        ]
        self.phase: dict[str, Phase] = {}
        self.owner: dict[str, str] = {}
        self.batch: dict[str, str | None] = {}
        self.moves: Counter[str] = Counter()
        self.fence: dict[str, int] = {}

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        for client in self.clients:
            self.run(client.aclose())
        self.loop.close()
        self.sync.close()

    def snapshot(self) -> dict[str, Any]:
        return {key: self.sync.dump(key) for key in sorted(self.sync.keys("*"))}

    @initialize()
    def start(self) -> None:
        self.sync.flushall()

    @rule(target=generations, owner=st.sampled_from(OWNERS), in_batch=st.booleans())
    def create(self, owner: str, in_batch: bool) -> str:
        record = GenerationRecord.new(owner, CreateRequest(prompt=f"{owner}'s prompt"))
        if in_batch:
            record.batch_id = BATCH
        self.run(self.stores[0].enqueue_new(record, max_depth=10_000))
        self.phase[record.id] = Phase.WAITING
        self.owner[record.id] = owner
        self.batch[record.id] = record.batch_id
        self.moves[record.id] = 1
        return record.id

    def expected(self, gen_id: str, to: Phase, expect: set[Phase] | None) -> Outcome:
        current = self.phase[gen_id]
        if expect is not None and current not in expect:
            return Outcome.UNEXPECTED
        return Outcome.OK if to in TRANSITIONS[current] else Outcome.ILLEGAL

    def apply(self, gen_id: str, to: Phase) -> None:
        if self.phase[gen_id] != to:
            self.moves[gen_id] += 1
        self.phase[gen_id] = to

    @rule(gen_id=generations, to=phases, expect=st.none() | st.sets(phases, min_size=1, max_size=3))
    def move(self, gen_id: str, to: Phase, expect: set[Phase] | None) -> None:
        outcome = self.expected(gen_id, to, expect)
        before = self.snapshot()
        fields: dict[str, Any] = {"failure_reason": "cancelled"} if to is Phase.FAILED else {}
        if to is Phase.SUBMITTING:
            fields["fence"] = len(self.fence) + 1
        result = self.run(self.stores[0].transition(gen_id, to, expect=expect, **fields))
        assert result.outcome is outcome, (self.phase[gen_id], to, expect)
        if outcome is Outcome.OK:
            self.apply(gen_id, to)
            if "fence" in fields:
                self.fence[gen_id] = fields["fence"]
        else:
            assert self.snapshot() == before, "a refused transition wrote something"

    @rule(gen_id=generations, to=phases, wrong=st.booleans())
    def fenced_move(self, gen_id: str, to: Phase, wrong: bool) -> None:
        """A write fenced by an intent's token: a stale token changes nothing."""
        if gen_id not in self.fence:
            return
        token = self.fence[gen_id] + (1000 if wrong else 0)
        before = self.snapshot()
        result = self.run(self.stores[0].transition(gen_id, to, fenced_by=token))
        legal = to in TRANSITIONS[self.phase[gen_id]]
        if wrong:
            assert result.outcome is Outcome.FENCED
            assert self.snapshot() == before
        else:
            assert result.outcome is (Outcome.OK if legal else Outcome.ILLEGAL)
            if legal:
                self.apply(gen_id, to)

    @rule(gen_id=generations, first=phases, second=phases)
    def race(self, gen_id: str, first: Phase, second: Phase) -> None:
        """Two clients move one generation at once: the result is one of the two serial orders."""
        start = self.phase[gen_id]

        async def both() -> list[Any]:
            return list(
                await asyncio.gather(
                    self.stores[0].transition(gen_id, first, expect={start}),
                    self.stores[1].transition(gen_id, second, expect={start}),
                )
            )

        one, two = self.run(both())
        allowed_first, allowed_second = first in TRANSITIONS[start], second in TRANSITIONS[start]
        winners = [phase for phase, result in ((first, one), (second, two)) if result.ok]
        # Each expects the phase it started from, so after one real move the other is refused,
        # unless the winner stayed where it was (a write without a move).
        if allowed_first and allowed_second and first != start and second != start:
            assert len(winners) == 1, (start, first, second, one.outcome, two.outcome)
        moved = any(phase != start for phase in winners)
        for result, allowed in ((one, allowed_first), (two, allowed_second)):
            if not result.ok:
                # Refused: because the move is not in the table, or because the other one moved it first.
                assert (not allowed and result.outcome is Outcome.ILLEGAL) or (
                    moved and result.outcome is Outcome.UNEXPECTED
                ), (start, first, second, one.outcome, two.outcome)
        final = self.run(self.stores[0].get(gen_id))
        assert final is not None
        assert final.phase in [*winners, start]
        for phase in winners:
            if phase != start:
                self.moves[gen_id] += 1
        self.phase[gen_id] = final.phase

    @invariant()
    def record_indexes_and_log_agree(self) -> None:
        store = self.stores[0]
        events = EventLog(self.clients[0])
        for gen_id, phase in self.phase.items():
            record = self.run(store.get(gen_id))
            assert record is not None and record.phase is phase
            history = self.run(events.history(gen_id))
            assert len(history) == self.moves[gen_id]
            assert history[-1].to_phase is phase
            for earlier, later in itertools.pairwise(history):
                assert later.from_phase is earlier.to_phase
        for owner in OWNERS:
            mine = {gen_id for gen_id, who in self.owner.items() if who == owner}
            assert set(self.sync.zrange(keys.owner_index(owner), 0, -1)) == mine
            for state in PUBLIC_STATES:
                in_state = {gen_id for gen_id in mine if PUBLIC_STATE[self.phase[gen_id]] == state}
                assert set(self.sync.zrange(keys.owner_state_index(owner, state), 0, -1)) == in_state
                batch = {gen_id for gen_id in in_state if self.batch[gen_id] == BATCH}
                assert set(self.sync.zrange(keys.batch_state_index(owner, BATCH, state), 0, -1)) == batch
        assert self.sync.xlen(keys.EVENTS) == sum(self.moves.values())
        for owner in OWNERS:
            expected = sum(count for gen_id, count in self.moves.items() if self.owner[gen_id] == owner)
            assert self.sync.xlen(keys.owner_events(owner)) == expected


def test_transitions_keep_record_indexes_and_log_in_agreement(redis_url: str) -> None:
    """Random sequences of moves, fenced writes and two-client races; the model holds after every step."""
    run_state_machine_as_test(
        lambda: TransitionMachine(redis_url),
        settings=settings(
            max_examples=30,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
