"""A caller's request budget, counted in Redis inside the request's own read.

The hot paths (assign, the assignment lookup) already make one Redis call per
request: a Lua script that reads the cached definition and assignment. The budget
rides in that same script: it increments the caller's fixed-window counter, refuses
when the counter is past the limit, and otherwise returns the reads. So a budget
costs no round trip of its own, and every gunicorn worker counts against the same
Redis key: the limit holds across processes exactly as Redis counts.

When Redis is unreachable each process counts on its own (:class:`LocalWindow`),
with the shared budget divided by the number of worker processes, so all workers
together still admit about one budget per window while Redis is away.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

import limits
import redis

from core import redis as redis_state
from core.errors import RateLimited

from .cache import rate_limit_key


class LocalWindow:
    """A per-process fixed window per key: the fallback while Redis is unreachable."""

    def __init__(self, limit: int, window_s: int):
        self.limit = limit
        self.window_s = window_s
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int]] = {}

    def spend(self, key: str) -> int | None:
        """Count one request; ``None`` when admitted, else seconds until the window resets."""
        now = time.monotonic()
        with self._lock:
            started, spent = self._windows.get(key, (now, 0))
            if now - started >= self.window_s:
                started, spent = now, 0
            if spent >= self.limit:
                return max(1, math.ceil(started + self.window_s - now))
            if len(self._windows) > 10_000:
                self._windows = {k: v for k, v in self._windows.items() if now - v[0] < self.window_s}
            self._windows[key] = (started, spent + 1)
            return None


@dataclass(frozen=True)
class RatePolicy:
    """One budget (``limit`` requests per ``window_s``) per caller, shared by several endpoints."""

    scope: str
    limit: int
    window_s: int
    description: str
    local: LocalWindow = field(repr=False, compare=False)

    @classmethod
    def parse(cls, scope: str, spec: str, workers: int) -> RatePolicy:
        """``spec`` in the ``limits`` notation (``120000/minute``, ``50 per second``)."""
        item = limits.parse(spec)
        window_s = int(item.get_expiry())
        share = max(1, math.ceil(item.amount / max(1, workers)))
        return cls(scope, item.amount, window_s, str(item), LocalWindow(share, window_s))

    def budget(self, caller: str) -> Budget:
        return Budget(self, rate_limit_key(self.scope, caller))


@dataclass(frozen=True, slots=True)
class Budget:
    """What one request spends: the policy and the caller's counter key."""

    policy: RatePolicy
    key: str

    def refuse(self, pttl_ms: int) -> RateLimited:
        return RateLimited(self.policy.description, max(1, math.ceil(pttl_ms / 1000)))

    def spend_locally(self) -> None:
        """Redis is away: count in this process; raises :class:`RateLimited` past its share."""
        retry_after = self.policy.local.spend(self.key)
        if retry_after is not None:
            raise RateLimited(self.policy.description, retry_after)


def spend_budget_lua(counter: str, limit: str, window: str, refused: int) -> str:
    """The Lua that opens every script carrying a request's budget: spend one from the
    fixed-window ``counter`` (``limit`` 0: no budget) and, when it is spent, return
    ``{refused, pttl_ms}`` before anything else runs. Arguments are Lua expressions."""
    return f"""
local limit = tonumber({limit})
if limit > 0 then
  local spent = redis.call('INCR', {counter})
  if spent == 1 then redis.call('EXPIRE', {counter}, {window}) end
  if spent > limit then
    local ttl = redis.call('PTTL', {counter})
    if ttl < 0 then  -- a counter left without a lifetime would refuse forever
      redis.call('EXPIRE', {counter}, {window})
      ttl = tonumber({window}) * 1000
    end
    return {{{refused}, ttl}}
  end
end
"""


# KEYS[1] the budget's counter, KEYS[2..] the keys the request reads;
# ARGV[1] the limit (0: no budget), ARGV[2] the window in seconds.
# Returns {0, values} when admitted, {1, pttl_ms} when refused (nothing read).
READ_WITH_BUDGET_LUA = spend_budget_lua("KEYS[1]", "ARGV[1]", "ARGV[2]", refused=1) + """if #KEYS < 2 then return {0, {}} end
return {0, redis.call('MGET', unpack(KEYS, 2))}
"""

def read_with_budget(client: redis.Redis, budget: Budget | None, keys: list[str]) -> list[bytes | None]:
    """``MGET keys`` after spending ``budget`` (when given), in one round trip.

    Raises :class:`RateLimited` when the budget is spent (nothing is read then) and
    ``redis.RedisError`` when Redis is unreachable (the caller falls back).
    """
    script = redis_state.script(client, READ_WITH_BUDGET_LUA)
    if budget is None:
        if not keys:
            return []
        outcome = script(keys=[keys[0], *keys], args=[0, 0])
    else:
        outcome = script(keys=[budget.key, *keys], args=[budget.policy.limit, budget.policy.window_s])
    if outcome[0] == 1:
        raise budget.refuse(int(outcome[1]))  # type: ignore[union-attr]
    return outcome[1]


def spend(client: redis.Redis | None, budget: Budget | None) -> None:
    """Spend one request of ``budget`` (endpoints with no Redis read to ride on): one round trip.

    Raises :class:`RateLimited` past the limit; with Redis unreachable the budget is
    counted in this process (:meth:`Budget.spend_locally`) so the endpoint keeps its limit.
    """
    if budget is None:
        return
    if client is not None:
        try:
            read_with_budget(client, budget, [])
            return
        except redis.RedisError:
            pass
    budget.spend_locally()
