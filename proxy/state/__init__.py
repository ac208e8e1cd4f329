"""Shared state: counters that must agree across workers and instances.

`base.py` holds the interface (`LimitStore`), `memory.py` the in-process default. A Redis
backend implements the same interface so that limits hold across instances.
"""

from proxy.state.base import Clock, LimitStore, Take, wall_clock
from proxy.state.memory import MemoryLimitStore

__all__ = ["Clock", "LimitStore", "MemoryLimitStore", "Take", "wall_clock"]
