"""The bounded map behind token caches and page sessions."""

from __future__ import annotations

from culler.core.ttlmap import TTLMap


def test_entries_expire_after_their_ttl() -> None:
    now = [0.0]
    cache: TTLMap[str, int] = TTLMap(10, 100, clock=lambda: now[0])
    cache.put("a", 1)
    now[0] = 9.9
    assert cache.get("a") == 1
    now[0] = 10.0
    assert cache.get("a") is None and len(cache) == 0


def test_over_the_cap_the_oldest_go_one_at_a_time() -> None:
    now = [0.0]
    cache: TTLMap[int, int] = TTLMap(1000, 3, clock=lambda: now[0])
    for key in range(5):
        now[0] += 1
        cache.put(key, key)
    assert cache.keys() == [2, 3, 4]


def test_a_put_refreshes_the_entry_and_its_place() -> None:
    now = [0.0]
    cache: TTLMap[str, int] = TTLMap(10, 2, clock=lambda: now[0])
    cache.put("a", 1)
    cache.put("b", 2)
    now[0] = 5
    cache.put("a", 3)  # a is now the newest
    cache.put("c", 4)
    assert cache.keys() == ["a", "c"]
    now[0] = 14
    assert cache.get("a") == 3


def test_expired_entries_are_pruned_on_put_without_reads() -> None:
    now = [0.0]
    cache: TTLMap[int, int] = TTLMap(5, 1000, clock=lambda: now[0])
    for key in range(100):
        now[0] += 1
        cache.put(key, key)
    assert len(cache) <= 5


def test_pop_takes_only_live_values() -> None:
    now = [0.0]
    cache: TTLMap[str, bool] = TTLMap(5, 10, clock=lambda: now[0])
    cache.put("s", True)
    assert cache.pop("s") is True and cache.pop("s") is None
    cache.put("t", True)
    now[0] = 6
    assert cache.pop("t") is None
