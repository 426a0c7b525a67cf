"""Per-key token buckets, shared by the annotation server and the guardrails (runtime and proxy).

The table of buckets is a bounded LRU: a client that invents a new key per request (random bearer values,
spoofed names) cannot grow it past `max_keys`. Evicting the least recently used bucket forgets its history,
which can only let that key start again with a full bucket; with keys that are authenticated identities or
client addresses (never an unauthenticated string) an attacker cannot use this to exceed the rate.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

MAX_KEYS = 100_000


class TokenBucket:
    """Per-key token buckets: `rate` tokens a second, holding at most `burst`; `rate <= 0` turns limiting off
    (every request goes ahead), as `--rate 0` does everywhere. At most `max_keys` buckets are kept."""

    def __init__(self, rate: float, burst: int, max_keys: int = MAX_KEYS):
        if max_keys < 1:
            raise ValueError(f"max_keys: must be at least 1, got {max_keys}")
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self.state: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def take(self, key) -> float:
        """0 when a request may go ahead, else the seconds until one may."""
        if self.rate <= 0:
            return 0.0
        with self.lock:
            stamp = time.monotonic()
            tokens, last = self.state.pop(key, (self.burst, stamp))
            tokens = min(self.burst, tokens + (stamp - last) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            self.state[key] = (tokens - 1 if tokens >= 1 else tokens, stamp)  # re-inserted: most recent
            while len(self.state) > self.max_keys:
                self.state.popitem(last=False)
            return wait

    @property
    def size(self) -> int:
        """How many keys have a bucket now (at most max_keys)."""
        return len(self.state)
