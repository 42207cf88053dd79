import pytest

from asyncvla.runtime.batching import DynamicBatcher, Waiting


def w(name, samples, shard=(0, 0), arrived=0.0):
    return Waiting(request=name, samples=samples, shard=shard, arrived=arrived)


def names(items):
    return [x.request for x in items]


# -- dynamic: full ---------------------------------------------------------------------------------


def test_closes_when_samples_not_requests_reach_max():
    b = DynamicBatcher(max_samples=6, timeout_s=100.0)
    a = w("a", 3, (0, 0), 0.0)
    b.add(a)
    assert b.ready(0.0, [a]) == (False, "")  # one request of 3 samples: not full
    c = w("c", 3, (1, 0), 0.0)
    b.add(c)
    assert b.ready(0.0, [a, c]) == (True, "full")  # 3 + 3 = 6 samples


def test_many_small_requests_below_max_samples_are_not_full():
    b = DynamicBatcher(max_samples=10, timeout_s=100.0)
    items = [w(i, 1, (i, 0), 0.0) for i in range(9)]
    for x in items:
        b.add(x)
    assert b.ready(0.0, items) == (False, "")  # 9 requests but only 9 < 10 samples


def test_nothing_admissible_is_never_ready():
    b = DynamicBatcher(max_samples=1, timeout_s=0.0)
    held = w("held", 5)
    b.add(held)
    assert b.ready(1e9, []) == (False, "")
    assert b.opened is None and b.deadline() is None


# -- dynamic: timeout ------------------------------------------------------------------------------


def test_timeout_is_measured_from_when_the_batch_opened():
    b = DynamicBatcher(max_samples=100, timeout_s=0.5)
    first = w("first", 1, (0, 0), arrived=1.0)
    b.add(first)
    assert b.ready(1.2, [first]) == (False, "")
    assert b.opened == 1.0 and b.deadline() == pytest.approx(1.5)
    late = w("late", 1, (1, 0), arrived=1.4)
    b.add(late)
    # the later arrival does not restart the clock
    assert b.ready(1.49, [first, late]) == (False, "")
    assert b.ready(1.5, [first, late]) == (True, "timeout")
    assert names(b.take([first, late])) == ["first", "late"]
    assert b.opened is None and b.waiting == []


def test_next_batch_opens_at_its_own_oldest_request():
    b = DynamicBatcher(max_samples=100, timeout_s=1.0)
    x = w("x", 1, arrived=0.0)
    b.add(x)
    assert b.ready(1.0, [x]) == (True, "timeout")
    b.take([x])
    y = w("y", 1, arrived=5.0)
    b.add(y)
    assert b.ready(5.5, [y]) == (False, "")  # opened at 5.0, not at the previous batch's 0.0
    assert b.opened == 5.0
    assert b.ready(6.0, [y]) == (True, "timeout")


# -- dynamic: take ---------------------------------------------------------------------------------


def test_take_returns_arrival_order_up_to_max_samples():
    b = DynamicBatcher(max_samples=6, timeout_s=1.0)
    items = [w("a", 2, (0, 0), 0.0), w("b", 3, (1, 0), 0.1), w("c", 2, (2, 0), 0.2), w("d", 1, (3, 0), 0.3)]
    for x in items:
        b.add(x)
    assert b.ready(0.3, items) == (True, "full")
    batch = b.take(items)
    assert names(batch) == ["a", "b"]  # 2 + 3 = 5; adding c (2) would exceed 6: stop, no skipping
    assert names(b.waiting) == ["c", "d"]
    assert b.ready(0.3, b.waiting)[0] is False  # 3 samples, opened again at 0.2
    assert b.opened == 0.2


def test_take_fills_exactly_to_max_samples():
    b = DynamicBatcher(max_samples=6, timeout_s=1.0)
    items = [w("a", 3), w("b", 3), w("c", 1)]
    for x in items:
        b.add(x)
    assert names(b.take(items)) == ["a", "b"]
    assert names(b.waiting) == ["c"]


def test_take_always_takes_at_least_one_request_even_if_larger_than_max():
    b = DynamicBatcher(max_samples=4, timeout_s=1.0)
    big, small = w("big", 10), w("small", 1)
    b.add(big)
    b.add(small)
    assert b.ready(0.0, [big, small]) == (True, "full")
    assert names(b.take([big, small])) == ["big"]
    assert names(b.waiting) == ["small"]


def test_held_requests_stay_waiting():
    b = DynamicBatcher(max_samples=4, timeout_s=1.0)
    held1, ok1, held2, ok2 = w("held1", 2), w("ok1", 2), w("held2", 2), w("ok2", 2)
    for x in (held1, ok1, held2, ok2):
        b.add(x)
    adm = [ok1, ok2]
    assert b.ready(0.0, adm) == (True, "full")
    assert names(b.take(adm)) == ["ok1", "ok2"]
    assert names(b.waiting) == ["held1", "held2"]
    assert b.ready(10.0, []) == (False, "")  # still held: nothing closes, however long they wait


# -- static ----------------------------------------------------------------------------------------


def test_static_mode_waits_for_every_shard_counting_held_ones():
    shards = {(0, 0), (1, 0), (1, 1)}
    b = DynamicBatcher(max_samples=1, timeout_s=0.0, static_shards=shards)
    r00 = w("r00", 5, (0, 0), 0.0)
    b.add(r00)
    # neither max_samples nor the timeout close a static batch
    assert b.ready(100.0, [r00]) == (False, "all_shards")
    r10 = w("r10", 5, (1, 0), 0.0)
    b.add(r10)
    assert b.ready(100.0, [r00, r10])[0] is False
    r11 = w("r11", 5, (1, 1), 0.0)  # arrives, but is held (not admissible)
    b.add(r11)
    assert b.ready(100.0, [r00, r10]) == (True, "all_shards")
    assert b.deadline() is None
    # all admissible ones are taken, with no max_samples cap; the held one stays
    assert names(b.take([r00, r10])) == ["r00", "r10"]
    assert names(b.waiting) == ["r11"]
    assert b.ready(100.0, [r11]) == (False, "all_shards")


def test_static_mode_with_nothing_admissible_is_not_ready():
    b = DynamicBatcher(max_samples=1, timeout_s=0.0, static_shards={(0, 0)})
    r = w("r", 1, (0, 0))
    b.add(r)
    assert b.ready(0.0, []) == (False, "")
    assert b.ready(0.0, [r]) == (True, "all_shards")
