"""Throttling of guessed secrets (passwords, client secrets), after OWASP's guidance: a lock per
(account, client address), so an attacker locks himself out and not the account's owner, and a
limit per client address across accounts. Attempts are counted in the auth database (shared by
every gateway replica) before the secret is checked."""

from __future__ import annotations

from gateway.auth.http import behind_haproxy
from gateway.auth.store import AuthStore
from pipeline.config import AuthConfig


class AttemptLimits:
    """The lock-out keys of one guess and their limits. Behind HAProxy every client has HAProxy's
    address: the limit per address would lock every user out at once and is left out, and the lock
    per (account, address) becomes one per account."""

    def __init__(self, store: AuthStore, cfg: AuthConfig):
        self.store, self.cfg = store, cfg

    def limits(self, account: str, address: str) -> dict[str, int]:
        keys = {f"{account}|addr:{address}": self.cfg.login_max_failures}
        if not behind_haproxy():
            keys[f"addr:{address}"] = self.cfg.login_max_failures_per_address
        return keys

    def begin(self, account: str, address: str) -> tuple[float, float]:
        """Count an attempt before checking it: (wait_s, 0) when locked, else (0, lock-out it started)."""
        return self.store.begin_attempt(self.limits(account, address), self.cfg.login_lockout_s)

    def locked_for(self, account: str, address: str) -> float:
        return max(self.store.locked_for(k) for k in self.limits(account, address))

    def record_failure(self, account: str, address: str) -> float:
        return max(
            self.store.record_failure(k, n, self.cfg.login_lockout_s) for k, n in self.limits(account, address).items()
        )

    def refund(self, account: str, address: str, succeeded: bool) -> None:
        """The attempt was not a failure: a success clears its (account, address) count."""
        for key, n in self.limits(account, address).items():
            if succeeded and key.startswith(account + "|"):
                self.store.clear_failures(key)
            else:
                self.store.refund_attempt(key, n)
