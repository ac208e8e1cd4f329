"""Shared state: what must agree across workers and instances.

`shared.py` shares credential cooldowns and metrics (nothing with `state: memory`, through
Redis with `state: redis://…`).
"""
