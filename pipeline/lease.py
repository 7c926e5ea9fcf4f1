"""A lease in Redis: at most one process reads a camera, and another takes over when the holder dies.

- acquire: `SET key token NX PX ttl`; renew: compare-and-PEXPIRE; release: compare-and-DEL (Lua, atomic).
- Expiry runs on Redis's clock (PX), so a jump of any host's wall clock changes nothing; the holder
  itself only uses its monotonic clock.
- The holder counts the lease valid until (monotonic time *before* the acquire/renew was sent) +
  ttl * (1 - margin). Redis started the key's PX after that instant, so the holder stops publishing
  before anyone else can acquire, even when a renewal reply is lost or Redis is unreachable.
- Every acquisition takes a new epoch (INCR), a fencing number that grows with each holder.
- A Redis that restarted empty (no persistence) has forgotten the lease: the holder, while its lease
  is still valid locally, takes the missing key back at its next renewal (and restores the epoch
  counter), so the reader goes on instead of stopping and reopening its camera. Nobody else can have
  held it meanwhile: the key was ours until Redis lost it, and a missing key is free to take.
- A renewal that comes late (a starved thread) but finds the key still ours extends it: nobody else
  can have acquired meanwhile. The holder published nothing while its local validity had lapsed.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable

import redis
from redis.commands.core import Script

from pipeline import keys

log = logging.getLogger(__name__)

__all__ = ["Lease", "LeaseKeeper", "lease_key", "default_owner"]

_UNBOUND: Any = None  # the scripts are bound to no client: each call passes its own

_ACQUIRE = Script(
    _UNBOUND,
    b"""
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
""",
)
_RENEW = Script(
    _UNBOUND,
    b"""
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if not holder and ARGV[4] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  if (tonumber(redis.call('GET', KEYS[2])) or 0) < tonumber(ARGV[3]) then
    redis.call('SET', KEYS[2], ARGV[3])
  end
  return 2
end
return 0
""",
)
_RELEASE = Script(
    _UNBOUND,
    b"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
""",
)


def lease_key(camera_id: str) -> str:
    return keys.ingest_lease(camera_id)


def default_owner() -> str:
    """host:pid, shown as the holder."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Lease:
    """One process's claim on `key`; see the module doc for the guarantees."""

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        ttl_s: float,
        owner: str | None = None,
        *,
        margin: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not 0.1 <= ttl_s <= 3600:
            raise ValueError(f"lease ttl_s must be in [0.1, 3600], got {ttl_s!r}")
        if not 0.0 <= margin < 0.5:
            raise ValueError(f"lease margin must be in [0, 0.5), got {margin!r}")
        self.client = client
        self.key = key
        self.ttl_s = float(ttl_s)
        self.margin = margin
        self.owner = owner or default_owner()
        self._clock = clock
        self.token: str | None = None
        self.epoch = 0
        self._valid_until = 0.0
        self._ttl_ms = max(1, int(round(self.ttl_s * 1000)))
        self.retaken = 0  # keys taken back from a Redis that lost them

    def _extend(self, sent_at: float) -> None:
        self._valid_until = sent_at + self.ttl_s * (1.0 - self.margin)

    def try_acquire(self) -> bool:
        """Take the lease if nobody holds it; True when this process holds it afterwards."""
        if self.valid():
            return self.renew()
        token = f"{self.owner}/{uuid.uuid4().hex[:12]}"
        sent = self._clock()
        epoch = int(_ACQUIRE(keys=[self.key, self.key + ":epoch"], args=[token, self._ttl_ms], client=self.client))
        if epoch:
            self.token, self.epoch = token, epoch
            self._extend(sent)
            return True
        return False

    def renew(self) -> bool:
        """Extend the lease; False (and no longer valid) when another holder has it or it expired.

        Still valid locally, a key that Redis lost (restarted empty) is taken back (`retaken` counts it)."""
        if self.token is None:
            return False
        sent = self._clock()
        may_retake = "1" if sent < self._valid_until else "0"
        reply = _RENEW(
            keys=[self.key, self.key + ":epoch"],
            args=[self.token, self._ttl_ms, self.epoch, may_retake],
            client=self.client,
        )
        if reply in (1, 2):
            self._extend(sent)
            self.retaken += reply == 2
            return True
        self.token, self._valid_until = None, 0.0
        return False

    def release(self) -> bool:
        """Give the lease up now (only if still ours), so a standby takes over at once."""
        token, self.token, self._valid_until = self.token, None, 0.0
        if token is None:
            return False
        return _RELEASE(keys=[self.key], args=[token], client=self.client) == 1

    def valid(self) -> bool:
        """Whether this process may still act as the holder (local, monotonic; no Redis call)."""
        return self.token is not None and self._clock() < self._valid_until

    def remaining_s(self) -> float:
        return max(0.0, self._valid_until - self._clock()) if self.token else 0.0

    def holder(self) -> str | None:
        """The current holder's token as Redis sees it (owner/random), or None."""
        value = self.client.get(self.key)
        return value.decode() if isinstance(value, bytes) else value


class LeaseKeeper:
    """Acquires and renews a Lease in a loop; calls on_acquired / on_lost on its thread.

    Renews every ttl/3 while held; a failed renewal or a Redis error that lasts until the local
    validity ends calls on_lost (before anyone else can acquire). Not holding, it retries every
    `retry_s` (default ttl/5), so a standby takes over at most ttl + retry_s after the holder died.
    """

    def __init__(
        self,
        lease: Lease,
        on_acquired: Callable[[Lease], None],
        on_lost: Callable[[Lease], None],
        *,
        name: str = "",
        retry_s: float | None = None,
        renew_s: float | None = None,
    ):
        self.lease = lease
        self.on_acquired = on_acquired
        self.on_lost = on_lost
        self.name = name or lease.key
        self.retry_s = retry_s if retry_s is not None else max(0.05, lease.ttl_s / 5)
        self.renew_s = renew_s if renew_s is not None else max(0.05, lease.ttl_s / 3)
        self.acquisitions = 0
        self.losses = 0
        self.errors = 0
        self._held = False
        self._beat = time.monotonic()
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self._held and self.lease.valid()

    def alive(self) -> bool:
        return (
            self._thread is not None
            and self._thread.is_alive()
            and time.monotonic() - self._beat < 30 + self.lease.ttl_s
        )

    def start(self, stop: threading.Event) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, args=(stop,), name=f"lease-{self.name}", daemon=True)
        self._thread.start()
        return self._thread

    def run(self, stop: threading.Event) -> None:
        """Until `stop`: hold the lease when possible; release it on the way out."""
        try:
            while not stop.is_set():
                self._beat = time.monotonic()
                stop.wait(self._step())
        finally:
            if self._held:
                self._lose("stopping", clean=True)
            try:
                self.lease.release()
            except redis.RedisError as exc:
                log.warning(
                    "%s: releasing the lease failed: %s (it expires in %.1fs)", self.name, exc, self.lease.ttl_s
                )

    def _step(self) -> float:
        lease = self.lease
        try:
            if self._held:
                retaken = lease.retaken
                if lease.renew():
                    if lease.retaken > retaken:
                        log.info(
                            "%s: Redis had lost the lease (restarted?); taken back (epoch %d)", self.name, lease.epoch
                        )
                    return min(self.renew_s, lease.remaining_s())
                self._lose("renewal refused: another holder, or it expired")
                return self.retry_s
            if lease.try_acquire():
                self._held = True
                self.acquisitions += 1
                log.info("%s: lease acquired (epoch %d, valid %.1fs)", self.name, lease.epoch, lease.remaining_s())
                self._call(self.on_acquired)
                return min(self.renew_s, lease.remaining_s())
            return self.retry_s
        except redis.RedisError as exc:
            self.errors += 1
            if self._held:
                left = lease.remaining_s()
                if left <= 0:
                    self._lose(f"Redis unreachable: {exc}")
                    return self.retry_s
                log.warning("%s: lease renewal failed (%s); still valid %.1fs", self.name, exc, left)
                return min(self.retry_s, left)
            log.warning("%s: lease acquisition failed: %s", self.name, exc)
            return self.retry_s

    def _lose(self, why: str, clean: bool = False) -> None:
        self._held = False
        if clean:  # we are stopping: giving the lease back is the plan, not a loss
            log.info("%s: lease released (%s)", self.name, why)
        else:
            self.losses += 1
            log.warning("%s: lease lost (%s); stopping", self.name, why)
        self._call(self.on_lost)
        try:
            self.lease.release()
        except redis.RedisError:
            self.lease.token = None

    def _call(self, fn: Callable[[Lease], None]) -> None:
        try:
            fn(self.lease)
        except Exception:  # noqa: BLE001 - a callback bug must not end the keeper
            log.exception("%s: lease callback %s raised", self.name, getattr(fn, "__name__", fn))
