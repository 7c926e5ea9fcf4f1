"""pipeline.lease against a real redis-server: expiry, renewal, release, takeover after a killed holder,
never two holders, and clock-jump safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import redis

from conftest import ROOT
from pipeline.lease import Lease, LeaseKeeper, lease_key

HOLDER = textwrap.dedent("""
    import sys, threading, time
    import redis
    from pipeline.lease import Lease, LeaseKeeper
    url, key, ttl, log_path, owner = sys.argv[1:6]
    out = open(log_path, "a", buffering=1)
    lease = Lease(redis.Redis.from_url(url), key, float(ttl), owner=owner)

    def acquired(lease):
        print("HELD", flush=True)

    def lost(lease):
        out.write(f"lost {time.monotonic()!r}\\n")

    # Each successful renewal logs how far this holder may act (its local validity end).
    renew = lease.renew
    def logged_renew():
        ok = renew()
        if ok:
            out.write(f"valid {time.monotonic()!r} {time.monotonic() + lease.remaining_s()!r}\\n")
        return ok
    lease.renew = logged_renew
    try_acquire = lease.try_acquire
    def logged_acquire():
        ok = try_acquire()
        if ok:
            out.write(f"acquired {time.monotonic()!r}\\n")
            out.write(f"valid {time.monotonic()!r} {time.monotonic() + lease.remaining_s()!r}\\n")
        return ok
    lease.try_acquire = logged_acquire
    LeaseKeeper(lease, acquired, lost, retry_s=0.02).run(threading.Event())
""")


def spawn_holder(url: str, key: str, ttl_s: float, log_path, owner: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, key, str(ttl_s), str(log_path), owner],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_acquire_is_exclusive_and_expires_on_redis_clock(redis_client):
    a = Lease(redis_client, "k", 0.5, owner="a")
    b = Lease(redis_client, "k", 0.5, owner="b")
    assert a.try_acquire() and a.valid() and a.epoch == 1
    assert not b.try_acquire() and not b.valid()
    assert a.holder().startswith("a/")
    assert 300 <= redis_client.pttl("k") <= 500
    time.sleep(0.6)  # a never renewed: Redis dropped the key
    assert not a.valid()
    assert b.try_acquire() and b.epoch == 2
    assert not a.renew() and a.token is None  # a finds out it lost


def test_renewal_keeps_it_and_release_hands_it_over(redis_client):
    a = Lease(redis_client, "k", 0.4, owner="a")
    b = Lease(redis_client, "k", 0.4, owner="b")
    assert a.try_acquire()
    for _ in range(6):  # 0.9 s, over twice the ttl
        time.sleep(0.15)
        assert a.renew() and a.valid()
        assert not b.try_acquire()
    assert a.release() and not a.valid()
    assert redis_client.get("k") is None
    assert b.try_acquire()
    assert not a.release()  # not a's any more: b's key stays
    assert b.holder().startswith("b/")


def test_local_validity_ends_before_redis_lets_another_in(redis_client):
    a = Lease(redis_client, "k", 1.0, owner="a", margin=0.1)
    b = Lease(redis_client, "k", 1.0, owner="b")
    assert a.try_acquire()
    while a.valid():
        assert not b.try_acquire()
        time.sleep(0.01)
    assert redis_client.pttl("k") > 0  # a already stopped, the key still guards it
    while not b.try_acquire():
        time.sleep(0.01)


def test_wall_clock_jumps_change_nothing(redis_client, monkeypatch):
    a = Lease(redis_client, "k", 0.5, owner="a")
    b = Lease(redis_client, "k", 0.5, owner="b")
    assert a.try_acquire()
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 7200)  # an NTP step of +2 h
    assert a.valid() and a.renew() and not b.try_acquire()
    monkeypatch.setattr(time, "time", lambda: real() - 7200)
    assert a.valid() and a.renew() and not b.try_acquire()


def test_keeper_loses_before_expiry_when_redis_goes_away(redis_server):
    client = redis.Redis.from_url(redis_server.url, socket_timeout=0.2, socket_connect_timeout=0.2)
    lease = Lease(client, "k", 1.0, owner="a")
    events: list[tuple[str, float, float]] = []
    keeper = LeaseKeeper(
        lease,
        lambda _lease: events.append(("acquired", time.monotonic(), 0.0)),
        lambda _lease: events.append(("lost", time.monotonic(), 0.0)),
    )
    stop = threading.Event()
    keeper.start(stop)
    deadline = time.monotonic() + 5
    while not keeper.held and time.monotonic() < deadline:
        time.sleep(0.01)
    assert keeper.held
    redis_server.stop()
    down_at = time.monotonic()
    while len(events) < 2 and time.monotonic() < down_at + 5:
        time.sleep(0.01)
    assert [e[0] for e in events] == ["acquired", "lost"]
    assert events[1][1] - down_at < 1.2  # about the ttl after the last renewal
    assert not lease.valid()
    stop.set()


def test_keeper_keeps_its_lease_across_a_redis_restart(redis_server):
    """Issue 13 item 20: a Redis restarted empty forgot every lease, each holder's renewal was refused and
    each camera's reader stopped and reopened its camera. Still valid, the holder takes the key back."""
    client = redis.Redis.from_url(redis_server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    lease = Lease(client, "k", 3.0, owner="a")
    events: list[str] = []
    keeper = LeaseKeeper(
        lease, lambda _lease: events.append("acquired"), lambda _lease: events.append("lost"), retry_s=0.05, renew_s=0.2
    )
    stop = threading.Event()
    keeper.start(stop)
    try:
        deadline = time.monotonic() + 5
        while not keeper.held and time.monotonic() < deadline:
            time.sleep(0.01)
        assert keeper.held and lease.epoch == 1
        for _ in range(2):  # the epoch counter too is gone after the first restart
            client.incr("k:epoch")  # others acquired meanwhile: a later acquirer must still get a higher epoch
        redis_server.stop()
        time.sleep(0.3)
        redis_server.start()  # same port, empty
        deadline = time.monotonic() + 5
        while client.get("k") is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (client.get("k") or b"").decode() == lease.token and events == ["acquired"], events
        assert lease.retaken == 1 and keeper.held and keeper.losses == 0
        assert int(client.get("k:epoch")) == lease.epoch == 1
        other = Lease(client, "k", 1.0, owner="b")
        assert not other.try_acquire()
    finally:
        stop.set()
        keeper._thread.join(5)
    assert other.try_acquire() and other.epoch == 2  # released on stop; the fencing number still grows


def test_late_renewal_extends_a_key_still_ours_but_never_takes_a_missing_one(redis_client):
    now = [100.0]
    a = Lease(redis_client, "k", 1.0, owner="a", clock=lambda: now[0])
    assert a.try_acquire()
    now[0] += 2.0  # a starved thread: local validity lapsed, the key (Redis's clock) not yet
    assert not a.valid() and redis_client.get("k") is not None
    assert a.renew() and a.valid()  # still ours in Redis: nobody else got in, extend
    redis_client.delete("k")
    now[0] += 2.0
    assert not a.renew() and a.token is None and redis_client.get("k") is None  # lapsed: may have been others'


def test_killed_holder_is_taken_over_within_ttl_and_never_two_holders(redis_server, tmp_path):
    """Three real processes contend; the holder is SIGKILLed again and again; validity never overlaps."""
    ttl = 0.6
    key = lease_key("door")
    logs = {name: tmp_path / f"{name}.log" for name in ("p1", "p2", "p3")}
    procs = {name: spawn_holder(redis_server.url, key, ttl, path, name) for name, path in logs.items()}
    client = redis.Redis.from_url(redis_server.url)
    takeovers = []
    try:
        for _ in range(4):
            deadline = time.monotonic() + 10
            while client.get(key) is None and time.monotonic() < deadline:
                time.sleep(0.01)
            holder = client.get(key).decode().split("/")[0]
            time.sleep(0.5)  # let it renew a few times
            assert client.get(key).decode().split("/")[0] == holder
            procs[holder].send_signal(signal.SIGKILL)
            procs[holder].wait(5)
            killed_at = time.monotonic()
            while True:
                value = client.get(key)
                if value is not None and value.decode().split("/")[0] != holder:
                    break
                assert time.monotonic() - killed_at < ttl + 1.0, "no takeover"
                time.sleep(0.005)
            takeovers.append(time.monotonic() - killed_at)
            procs[holder] = spawn_holder(redis_server.url, key, ttl, logs[holder], holder)  # it comes back
        time.sleep(0.5)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(5)
    assert max(takeovers) <= ttl + 0.3, takeovers
    # Tenures: from each acquisition to the last validity end written before the next event of that process.
    tenures = []
    for name, path in logs.items():
        start = end = None
        for line in path.read_text().splitlines():
            kind, *vals = line.split()
            if kind == "acquired":
                if start is not None:
                    tenures.append((start, end, name))
                start, end = float(vals[0]), None
            elif kind == "valid" and start is not None:
                end = float(vals[1])
            elif kind == "lost" and start is not None:
                tenures.append((start, min(end, float(vals[0])), name))
                start = None
        if start is not None:
            tenures.append((start, end, name))
    tenures.sort()
    assert len(tenures) >= 5, tenures
    for (s1, e1, n1), (s2, e2, n2) in zip(tenures, tenures[1:]):
        assert e1 <= s2, f"{n1} could act until {e1} but {n2} acquired at {s2}: {tenures}"


@pytest.mark.parametrize("bad", [0.0, 0.05, 4000])
def test_bad_ttl_is_named(redis_client, bad):
    with pytest.raises(ValueError, match=f"ttl_s must be in .*got {bad!r}"):
        Lease(redis_client, "k", bad)
