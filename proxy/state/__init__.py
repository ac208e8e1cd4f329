"""Shared state: what must agree across workers and instances.

`base.py` holds the client-limit counter interface (`LimitStore`), `memory.py` its in-process
default, `redis_limits.py` its Redis backend, so that limits hold across instances.
`shared.py` shares credential cooldowns and metrics (nothing with `state: memory`, through
Redis with `state: redis://…`).
"""

from proxy.state.base import Clock, LimitStore, Take, wall_clock
from proxy.state.memory import MemoryLimitStore

__all__ = ["Clock", "LimitStore", "MemoryLimitStore", "Take", "wall_clock"]
