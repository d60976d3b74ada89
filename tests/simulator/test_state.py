"""SimulatorState on a fake clock: timelines, in-flight accounting, credentials."""

from __future__ import annotations

import pytest

from simulator.config import AccountSpec, SimulatorConfig
from simulator.state import AccountConflict, CapacitySpent, SimulatorState


class FakeClock:
    def __init__(self, start: float = 1_718_863_346.278) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_state(clock: FakeClock, **knobs: object) -> SimulatorState:
    fields: dict[str, object] = {
        "pending_seconds": 10,
        "processing_seconds": 20,
        "accounts": [("a", "token-a", 5)],
        **knobs,
    }
    return SimulatorState(SimulatorConfig.model_validate(fields), now=clock)


def test_state_is_derived_from_the_clock(clock: FakeClock) -> None:
    """pending for pending_seconds, processing for processing_seconds, then the outcome."""
    state = make_state(clock, missing_url_seconds=5)
    generation = state.create_generation(state.account("a"), "p")
    seen = []
    for step in (0, 9.9, 0.1, 19.9, 0.1, 4.9, 0.1):
        clock.advance(step)
        seen.append((generation.state_at(clock()), generation.video_ready_at(clock())))
    assert seen == [
        ("pending", False),
        ("pending", False),
        ("processing", False),
        ("processing", False),
        ("completed", False),
        ("completed", False),
        ("completed", True),
    ]


def test_config_change_affects_only_new_generations(clock: FakeClock) -> None:
    """Timings are copied at create, so patching them leaves existing generations' timelines alone."""
    state = make_state(clock)
    old = state.create_generation(state.account("a"), "old")
    state.update_config({"pending_seconds": 0, "processing_seconds": 1})
    new = state.create_generation(state.account("a"), "new")
    clock.advance(2)
    assert (old.state_at(clock()), new.state_at(clock())) == ("pending", "completed")


def test_max_in_flight_counts_only_overlapping_generations(clock: FakeClock) -> None:
    """Sequential generations never overlap (max 1); three started within one lifetime give 3."""
    state = make_state(clock, accounts=[("a", "token-a", 100)])
    account = state.account("a")
    for _ in range(3):
        state.create_generation(account, "serial")
        clock.advance(30)  # exactly when the previous one becomes terminal
    assert account.max_in_flight == 1
    for _ in range(3):
        state.create_generation(account, "overlap")
        clock.advance(5)
    assert (account.max_in_flight, state.in_flight(account)) == (3, 3)
    clock.advance(30)
    assert state.in_flight(account) == 0
    assert state.account_stats()["a"]["max_in_flight"] == 3


def test_capacity_spent_raises_and_counts_rejection(clock: FakeClock) -> None:
    """The create after the last unit raises CapacitySpent, stores nothing and is counted."""
    state = make_state(clock, accounts=[("a", "token-a", 1)])
    account = state.account("a")
    state.create_generation(account, "only")
    with pytest.raises(CapacitySpent):
        state.create_generation(account, "too many")
    assert (len(state.generations), account.consumed, account.rejected_create_after_spent) == (1, 1, 1)


def test_session_ttl_expires_idle_credentials_and_rotation_keeps_session_alive(clock: FakeClock) -> None:
    """With session_ttl_seconds, a credential dies after the TTL unless a fresher rotated one is used."""
    state = make_state(clock, session_ttl_seconds=1800)
    account = state.account("a")
    clock.advance(1000)
    session = state.rotate_session(account)
    clock.advance(1000)
    assert state.authenticate("access_token=token-a") is None
    assert state.authenticate(f"access_token=token-a; luma_session={session}") is account
    clock.advance(1000)
    assert state.authenticate(f"luma_session={session}") is None


def test_adding_account_with_taken_name_or_token_is_refused(clock: FakeClock) -> None:
    """Names and credentials are unique across accounts."""
    state = make_state(clock)
    with pytest.raises(AccountConflict):
        state.add_account(AccountSpec(name="a", token="other"))
    with pytest.raises(AccountConflict):
        state.add_account(AccountSpec(name="b", token="token-a"))


def test_account_specs_accept_tuples_and_keep_tokens_out_of_repr() -> None:
    """Config accounts may be (name, token[, capacity]) tuples; the token never shows in repr."""
    config = SimulatorConfig(accounts=[("x", "secret-x"), ("y", "secret-y", 30)])
    assert [(a.name, a.capacity) for a in config.accounts] == [("x", 150), ("y", 30)]
    assert "secret" not in repr(config)


def test_default_accounts_are_the_dev_stacks() -> None:
    """SimulatorConfig() comes with sim-1/sim-token-1 and sim-2/sim-token-2, capacity 150."""
    assert [(a.name, a.token, a.capacity) for a in SimulatorConfig.default_accounts()] == [
        ("sim-1", "sim-token-1", 150),
        ("sim-2", "sim-token-2", 150),
    ]
    assert SimulatorConfig().accounts == SimulatorConfig.default_accounts()
