"""The scheduler alone, with a fake clock: every row of the outcome table, both strategies,
priority tiers, weighted rotation across blocks, recovery and the views others read."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest

from proxy.catalog import Target
from proxy.driver import Credential
from proxy.scheduler import DISABLE_COOLING, Recovery, Scheduler
from tests.fakes import FakeClock

MODEL = "gpt-4o-mini"


def targets(
    provider: str,
    n: int,
    *,
    priority: int = 0,
    model: str = MODEL,
    disable_cooling: bool = False,
    extra: dict[str, object] | None = None,
) -> list[Target]:
    return [
        Target(
            provider=provider,
            driver="openai-compatibility",
            credential=Credential(
                id=f"{provider}/{i}",
                provider=provider,
                secret=f"sk-{provider}-{i}",
                extra=extra or {},
            ),
            upstream_model=model,
            priority=priority,
            disable_cooling=disable_cooling,
        )
        for i in range(n)
    ]


def make(pool: Sequence[Target], clock: FakeClock, **kwargs: object) -> Scheduler:
    sched = Scheduler(clock=clock, wall_clock=lambda: 5_000.0, **kwargs)  # type: ignore[arg-type]
    sched.register((t.provider, t.credential.id) for t in pool)
    return sched


def ids(picks: Sequence[Target | None]) -> list[str]:
    return [p.credential.id if p else "-" for p in picks]


def picks(sched: Scheduler, pool: Sequence[Target], n: int) -> list[str]:
    return ids([sched.pick("m", pool, ()) for _ in range(n)])


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- strategies ------------------------------------------------------------------------------


def test_round_robin_spreads_evenly_in_declaration_order(clock: FakeClock) -> None:
    pool = targets("a", 3)
    sched = make(pool, clock)
    assert picks(sched, pool, 6) == ["a/0", "a/1", "a/2", "a/0", "a/1", "a/2"]
    assert set(Counter(picks(sched, pool, 300)).values()) == {100}


def test_round_robin_spreads_over_ready_credentials_only(clock: FakeClock) -> None:
    pool = targets("a", 4)
    sched = make(pool, clock)
    sched.rate_limited(pool[1], 30.0)
    counts = Counter(picks(sched, pool, 300))
    assert counts == {"a/0": 100, "a/2": 100, "a/3": 100}


def test_fill_first_uses_declaration_order(clock: FakeClock) -> None:
    pool = targets("a", 3)
    sched = make(pool, clock, strategy="fill-first")
    assert picks(sched, pool, 3) == ["a/0"] * 3
    sched.rate_limited(pool[0], 10.0)
    assert picks(sched, pool, 2) == ["a/1"] * 2
    clock.advance(10.0)
    assert picks(sched, pool, 1) == ["a/0"]


def test_fill_first_across_blocks_is_block_then_credential_order(clock: FakeClock) -> None:
    pool = targets("a", 2) + targets("b", 2)
    sched = make(pool, clock, strategy="fill-first")
    sched.rejected(pool[0])
    sched.rejected(pool[1])
    assert picks(sched, pool, 2) == ["b/0", "b/0"]


def test_tried_candidates_are_skipped_then_none(clock: FakeClock) -> None:
    pool = targets("a", 3)
    sched = make(pool, clock)
    tried: set[Target] = set()
    order = []
    while (c := sched.pick("m", pool, tried)) is not None:
        tried.add(c)
        order.append(c.credential.id)
    assert order == ["a/0", "a/1", "a/2"]


def test_highest_ready_priority_tier_first(clock: FakeClock) -> None:
    pool = targets("low", 2, priority=0) + targets("high", 2, priority=10)
    sched = make(pool, clock)
    assert set(picks(sched, pool, 10)) == {"high/0", "high/1"}
    # a higher tier already tried in this request gives way to the next tier
    assert sched.pick("m", pool, set(pool[2:])) in pool[:2]
    for t in pool[2:]:
        sched.rate_limited(t, 5.0)
    assert set(picks(sched, pool, 10)) == {"low/0", "low/1"}
    clock.advance(5.0)
    assert set(picks(sched, pool, 10)) == {"high/0", "high/1"}


def test_blocks_rotate_weighted_by_ready_credentials(clock: FakeClock) -> None:
    pool = targets("big", 3) + targets("small", 1)
    sched = make(pool, clock)
    sequence = picks(sched, pool, 400)
    counts = Counter(sequence)
    assert counts == {"big/0": 100, "big/1": 100, "big/2": 100, "small/0": 100}
    # interleaved, not in bursts: the small block gets one turn in every four
    for i in range(0, 400, 4):
        assert sum(1 for x in sequence[i : i + 4] if x.startswith("small")) == 1
    sched.rate_limited(pool[0], 60.0)  # big now has 2 ready: 2 turns to small's 1
    blocks = Counter(x.split("/")[0] for x in picks(sched, pool, 300))
    assert blocks == {"big": 200, "small": 100}
    clock.advance(60.0)  # the cooldown ends by itself: 3 to 1 again
    blocks = Counter(x.split("/")[0] for x in picks(sched, pool, 400))
    assert blocks == {"big": 300, "small": 100}
    sched.rejected(pool[3])  # small has none ready: big gets every turn
    assert {x.split("/")[0] for x in picks(sched, pool, 30)} == {"big"}
    sched.success(pool[3])
    assert "small/0" in picks(sched, pool, 4)


def test_equal_blocks_take_turns_and_unequal_ones_go_back_to_weights(clock: FakeClock) -> None:
    """Blocks of one size, all ready, rotate one by one (no weighing of every block); as
    soon as one block has fewer ready credentials, turns follow the weights again."""
    pool = [t for name in ("a", "b", "c", "d") for t in targets(name, 2)]
    sched = make(pool, clock)
    sequence = picks(sched, pool, 80)
    assert Counter(sequence) == {t.credential.id: 10 for t in pool}
    for i in range(0, 80, 4):  # every block once in each round of four
        assert sorted(x.split("/")[0] for x in sequence[i : i + 4]) == ["a", "b", "c", "d"]
    sched.rate_limited(pool[0], 60.0)  # a/0 cools: a has 1 ready, the others 2
    blocks = Counter(x.split("/")[0] for x in picks(sched, pool, 70))
    assert blocks == {"a": 10, "b": 20, "c": 20, "d": 20}
    clock.advance(60.0)  # equal again: plain turns
    blocks = Counter(x.split("/")[0] for x in picks(sched, pool, 40))
    assert blocks == {"a": 10, "b": 10, "c": 10, "d": 10}


def test_pools_keep_separate_cursors(clock: FakeClock) -> None:
    pool = targets("a", 2)
    sched = make(pool, clock)
    assert ids([sched.pick("x", pool, ()), sched.pick("y", pool, ())]) == ["a/0", "a/0"]


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="strategy"):
        Scheduler(strategy="random")


# -- outcome table ---------------------------------------------------------------------------


def test_success_clears_state_and_backoff(clock: FakeClock) -> None:
    pool = targets("a", 1)
    sched = make(pool, clock)
    assert [sched.rate_limited(pool[0], None) for _ in range(3)] == [1.0, 2.0, 4.0]
    sched.success(pool[0])
    assert sched.pick("m", pool, ()) is pool[0]
    assert sched.rate_limited(pool[0], None) == 1.0  # backoff starts over


def test_a_success_begun_before_a_failure_does_not_clear_it(clock: FakeClock) -> None:
    pool = targets("a", 1)
    sched = make(pool, clock)
    began = clock()
    clock.advance(0.5)
    sched.rate_limited(pool[0], 30.0)  # another request's 429 while this one is in flight
    sched.rejected(pool[0], "401")
    sched.success(pool[0], began)
    assert sched.pick("m", pool, ()) is None
    sched.success(pool[0], clock())
    assert sched.pick("m", pool, ()) is pool[0]


def test_429_with_hint_cools_exactly_that_long(clock: FakeClock) -> None:
    pool = targets("a", 2)
    sched = make(pool, clock)
    assert sched.rate_limited(pool[0], 30.0, "upstream a answered 429") == 30.0
    clock.advance(29.9)
    assert set(picks(sched, pool, 5)) == {"a/1"}
    clock.advance(0.1)
    assert "a/0" in picks(sched, pool, 2)


def test_429_hint_is_capped_by_max_cooldown(clock: FakeClock) -> None:
    pool = targets("a", 1)
    sched = make(pool, clock, max_cooldown=1800.0)
    assert sched.rate_limited(pool[0], 18 * 86400.0) == 1800.0  # an 18-day hint
    clock.advance(1800.0)
    assert sched.pick("m", pool, ()) is pool[0]


def test_429_without_hint_backs_off_exponentially_to_30_minutes(clock: FakeClock) -> None:
    pool = targets("a", 1)
    sched = make(pool, clock, max_cooldown=86400.0)
    applied = [sched.rate_limited(pool[0], None) for _ in range(13)]
    assert applied[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert applied[-2:] == [1800.0, 1800.0]
    capped = make(pool, clock, max_cooldown=10.0)
    assert [capped.rate_limited(pool[0], None) for _ in range(5)][-1] == 10.0


def test_a_shorter_hint_does_not_cut_a_running_cooldown(clock: FakeClock) -> None:
    pool = targets("a", 1)
    sched = make(pool, clock)
    sched.rate_limited(pool[0], 30.0)
    sched.rate_limited(pool[0], 1.0)  # a slower in-flight request's late answer
    clock.advance(2.0)
    assert sched.pick("m", pool, ()) is None
    assert sched.recovery(pool) == Recovery(in_seconds=28.0, quota=True)


def test_429_cools_only_that_model(clock: FakeClock) -> None:
    gpt = targets("a", 1)
    other = targets("a", 1, model="gpt-4o")
    sched = make(gpt, clock)
    sched.rate_limited(gpt[0], 60.0)
    assert sched.pick("m", gpt, ()) is None
    assert sched.pick("o", other, ()) is other[0]


@pytest.mark.parametrize("status", [401, 402, 403])
def test_rejected_disables_every_model_for_30_minutes(clock: FakeClock, status: int) -> None:
    gpt = targets("a", 2)
    other = targets("a", 2, model="gpt-4o")
    sched = make(gpt, clock)
    sched.rejected(gpt[0], f"upstream a answered {status}")
    assert set(picks(sched, gpt, 4)) == {"a/1"}
    assert sched.pick("o", other[:1], ()) is None
    clock.advance(30 * 60 - 1)
    assert sched.pick("o", other[:1], ()) is None
    clock.advance(1)
    assert sched.pick("o", other[:1], ()) is other[0]


def test_reload_reenables_rejected_keeps_429_and_drops_gone(clock: FakeClock) -> None:
    pool = targets("a", 3)
    sched = make(pool, clock)
    sched.rejected(pool[0], "401")
    sched.rate_limited(pool[1], 60.0, "429")
    sched.rate_limited(pool[2], 60.0, "429")
    sched.register([("a", "a/0"), ("a", "a/1")])  # a/2 was removed from the config
    assert {v.id: v.state for v in sched.credential_views()} == {
        "a/0": "ready",
        "a/1": "cooling_down",
    }
    assert set(picks(sched, pool[:2], 4)) == {"a/0"}
    sched.register([("a", "a/0"), ("a", "a/1"), ("a", "a/2")])  # a/2 is back, fresh
    assert set(picks(sched, pool, 4)) == {"a/0", "a/2"}


def test_transient_errors_cool_for_the_configured_time(clock: FakeClock) -> None:
    pool = targets("a", 2)
    sched = make(pool, clock, transient_cooldown=60.0)
    sched.transient(pool[0], "upstream a answered 503")
    assert set(picks(sched, pool, 4)) == {"a/1"}
    assert sched.recovery(pool[:1]) == Recovery(in_seconds=60.0, quota=False)
    clock.advance(60.0)
    assert "a/0" in picks(sched, pool, 2)
    off = make(pool, clock, transient_cooldown=0)
    off.transient(pool[0], "timeout")
    assert off.pick("m", pool[:1], ()) is pool[0]


@pytest.mark.parametrize("where", ["global", "block", "credential"])
def test_disable_cooling_skips_every_cooldown(clock: FakeClock, where: str) -> None:
    pool = targets(
        "a",
        1,
        disable_cooling=where == "block",
        extra={DISABLE_COOLING: True} if where == "credential" else None,
    )
    sched = make(pool, clock, disable_cooling=where == "global")
    assert sched.rate_limited(pool[0], 30.0, "429") == 0.0
    sched.rate_limited(pool[0], None, "429")
    sched.rejected(pool[0], "401")
    sched.transient(pool[0], "503")
    assert sched.pick("m", pool, ()) is pool[0]
    (view,) = sched.credential_views()
    assert (view.state, view.last_error) == ("ready", "503")


def test_cooling_on_for_other_credentials_of_the_block(clock: FakeClock) -> None:
    exempt = targets("a", 1, extra={DISABLE_COOLING: True})
    normal = targets("b", 1)
    sched = make(exempt + normal, clock)
    sched.rate_limited(exempt[0], 30.0)
    sched.rate_limited(normal[0], 30.0)
    assert picks(sched, exempt + normal, 2) == ["a/0", "a/0"]


# -- what others read ------------------------------------------------------------------------


def test_recovery_is_none_while_one_is_ready_else_the_soonest(clock: FakeClock) -> None:
    pool = targets("a", 3)
    sched = make(pool, clock)
    assert sched.recovery(pool) is None
    sched.rate_limited(pool[0], 40.0)
    sched.transient(pool[1], "503")  # 60 s
    assert sched.recovery(pool) is None
    sched.rejected(pool[2], "401")
    assert sched.recovery(pool) == Recovery(in_seconds=40.0, quota=True)
    clock.advance(40.0)
    assert sched.recovery(pool) is None
    sched.rate_limited(pool[0], 100.0)
    assert sched.recovery(pool) == Recovery(in_seconds=20.0, quota=False)  # the transient


def test_credential_views_name_state_reason_until_and_error(clock: FakeClock) -> None:
    pool = targets("a", 3) + targets("a", 3, model="gpt-4o")
    sched = make(pool, clock)
    sched.rate_limited(pool[1], 30.0, "upstream a answered 429: slow down")
    sched.rate_limited(pool[4], 90.0, "upstream a answered 429: tokens")
    sched.rejected(pool[2], "upstream a answered 401: bad key")
    views = {v.id: v for v in sched.credential_views()}
    assert views["a/0"].state == "ready" and views["a/0"].until is None
    cooling = views["a/1"]
    assert (cooling.state, cooling.reason, cooling.until) == ("cooling_down", "quota", 5_090.0)
    assert cooling.cooling_models == ("gpt-4o", "gpt-4o-mini")
    assert cooling.last_error == "upstream a answered 429: tokens"
    disabled = views["a/2"]
    assert (disabled.state, disabled.reason) == ("disabled", "unauthorized")
    assert disabled.until == 5_000.0 + 30 * 60
    assert "sk-" not in repr(list(views.values()))
    clock.advance(90.0)
    assert views["a/1"].last_error == sched.credential_views()[1].last_error  # history is kept
    assert sched.credential_views()[1].state == "ready"


def test_last_error_never_holds_the_secret(clock: FakeClock) -> None:
    pool = targets("a", 1)
    sched = make(pool, clock)
    sched.rejected(pool[0], "upstream a answered 401: Incorrect API key provided: sk-a-0.")
    (view,) = sched.credential_views()
    assert view.last_error == "upstream a answered 401: Incorrect API key provided: [redacted]."


def test_recover_clears_by_credential_or_provider(clock: FakeClock) -> None:
    pool = targets("a", 2) + targets("b", 1)
    sched = make(pool, clock)
    for t in pool:
        sched.rejected(t, "401")
    sched.rate_limited(pool[0], 30.0)
    assert sched.recover(credential_id="a/0") == 2
    assert sched.pick("m", pool, ()) is pool[0]
    assert sched.recover(provider="b") == 1
    assert {v.id for v in sched.credential_views() if v.state == "ready"} == {"a/0", "b/0"}
    assert sched.recover() == 1


def test_pick_with_a_hundred_credentials_scans_no_more_than_it_must(clock: FakeClock) -> None:
    pool = targets("a", 100)
    sched = make(pool, clock)
    for t in pool[:99]:
        sched.rate_limited(t, 60.0)
    assert set(picks(sched, pool, 50)) == {"a/99"}
    clock.advance(60.0)
    assert Counter(picks(sched, pool, 1000)) == {t.credential.id: 10 for t in pool}


def test_discontinued_disables_until_a_reload_whatever_the_clock(clock: FakeClock) -> None:
    pool = targets("roo", 2)
    sched = make(pool, clock, disable_cooling=True)  # not subject to disable-cooling
    sched.discontinued(pool[0], "the router was shut down")
    assert ids([sched.pick("m", pool, ())]) == ["roo/1"]
    assert sched.recovery(pool) is None  # one is still ready
    sched.discontinued(pool[1], "the router was shut down")
    clock.advance(10 * 24 * 3600.0)
    assert sched.pick("m", pool, ()) is None
    recovery = sched.recovery(pool)
    assert recovery is not None and recovery.discontinued == "the router was shut down"
    assert not recovery.quota
    views = {v.id: v for v in sched.credential_views()}
    assert views["roo/0"].state == "disabled" and views["roo/0"].reason == "discontinued"
    assert views["roo/0"].until is None
    sched.register((t.provider, t.credential.id) for t in pool)  # a reload
    assert sched.pick("m", pool, ()) is not None and sched.recovery(pool) is None
