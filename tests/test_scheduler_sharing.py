"""The scheduler's side of shared state: the changes it reports, and the ones it merges.

Two schedulers with clocks that disagree (monotonic clocks of two processes never agree; the
wall clock is what they share) stand for two instances; what one reports is given to the
other, as the Redis backend does (proxy/state/shared.py).
"""

from __future__ import annotations

from proxy.scheduler import CLEAR_COOL, COOL, DISABLE, Change, Scheduler
from tests.fakes import FakeClock
from tests.test_scheduler import targets

WALL = 1_800_000_000.0


def pair() -> tuple[Scheduler, Scheduler, FakeClock, FakeClock, list[Change], list[Change]]:
    pool = targets("p", 2)
    ca, cb = FakeClock(100.0), FakeClock(7_000.0)  # different monotonic origins
    wall = {"now": WALL}
    a = Scheduler(clock=ca, wall_clock=lambda: wall["now"] + ca.now - 100.0)
    b = Scheduler(clock=cb, wall_clock=lambda: wall["now"] + cb.now - 7_000.0)
    sent_a: list[Change] = []
    sent_b: list[Change] = []
    a.on_change, b.on_change = sent_a.append, sent_b.append
    for s in (a, b):
        s.register((t.provider, t.credential.id) for t in pool)
    return a, b, ca, cb, sent_a, sent_b


def test_a_429_reported_by_one_keeps_the_other_off_for_the_hint() -> None:
    a, b, ca, cb, sent_a, sent_b = pair()
    hot, cool = targets("p", 2)
    a.rate_limited(hot, 30.0)
    [change] = sent_a
    assert change.kind == COOL and change.credential_id == "p/0" and change.until == WALL + 30
    b.apply(change)
    assert not sent_b  # merged, not reported again
    assert b.pick("m", [hot, cool], ()) is cool
    assert b.recovery([hot]) is not None and abs(b.recovery([hot]).in_seconds - 30) < 1e-6
    ca.advance(29.0)
    cb.advance(29.0)
    assert b.pick("m", [hot], ()) is None
    cb.advance(1.5)
    assert b.pick("m", [hot], ()) is hot


def test_a_shorter_remote_cooldown_does_not_cut_a_local_one() -> None:
    a, b, _ca, _cb, sent_a, _sent_b = pair()
    hot, _cool = targets("p", 2)
    b.rate_limited(hot, 60.0)
    a.rate_limited(hot, 5.0)
    b.apply(sent_a[-1])
    assert abs(b.recovery([hot]).in_seconds - 60) < 1e-6  # type: ignore[union-attr]


def test_a_clear_undoes_only_what_was_recorded_before_it() -> None:
    a, b, ca, cb, sent_a, sent_b = pair()
    hot, _cool = targets("p", 2)
    started = ca.now  # a's attempt on the hot key begins...
    ca.advance(0.5)
    cb.advance(0.5)
    b.rate_limited(hot, 30.0)  # ...b sees a 429 meanwhile...
    a.apply(sent_b[-1])
    cb.advance(1.0)
    ca.advance(1.0)
    a.success(hot, started)  # ...a's success began before it: the cooldown stays
    assert a.recovery([hot]) is not None
    assert not [c for c in sent_a if c.kind == CLEAR_COOL]
    a.success(hot, ca.now)  # a success begun after it clears it, and says so
    [clear] = [c for c in sent_a if c.kind == CLEAR_COOL]
    b.apply(clear)
    assert b.recovery([hot]) is None


def test_disables_and_running_states_are_shared_and_unknown_credentials_ignored() -> None:
    a, b, _ca, _cb, sent_a, _sent_b = pair()
    hot, cool = targets("p", 2)
    a.rejected(hot)
    a.rate_limited(cool, 10.0)
    kinds = sorted(c.kind for c in a.shared_states())  # what a (re)connection sends again
    assert kinds == [COOL, DISABLE]
    for change in sent_a:
        b.apply(change)
    assert [v.state for v in b.credential_views()] == ["disabled", "cooling_down"]
    stranger = Change(COOL, "other/0", "m", WALL + 99, "quota", WALL)
    b.apply(stranger)  # a credential this config does not have: nothing happens
    assert len(b.credential_views()) == 2


def test_a_reload_lifts_disables_everywhere() -> None:
    a, b, _ca, _cb, sent_a, _sent_b = pair()
    hot, cool = targets("p", 2)
    b.rejected(hot)
    a.apply(b.shared_states()[0])
    a.register((t.provider, t.credential.id) for t in (hot, cool))  # a reload: the key was fixed
    [lifted] = sent_a
    b.apply(lifted)
    assert [v.state for v in b.credential_views()] == ["ready", "ready"]
