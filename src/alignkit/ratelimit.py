"""Per-key token buckets, shared by the annotation server and the guardrails (runtime and proxy)."""

from __future__ import annotations

import threading
import time


class TokenBucket:
    """Per-key token buckets: `rate` tokens a second, holding at most `burst`."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.state: dict = {}
        self.lock = threading.Lock()

    def take(self, key) -> float:
        """0 when a request may go ahead, else the seconds until one may."""
        with self.lock:
            stamp = time.monotonic()
            tokens, last = self.state.get(key, (self.burst, stamp))
            tokens = min(self.burst, tokens + (stamp - last) * self.rate)
            if tokens >= 1:
                self.state[key] = (tokens - 1, stamp)
                return 0.0
            self.state[key] = (tokens, stamp)
            return (1 - tokens) / self.rate
