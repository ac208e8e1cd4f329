"""Typed application keys: the shared components, as the app factory wires them.

Owns nothing but the names; each component module documents its own object.
"""

from __future__ import annotations

from aiohttp import web

from proxy.clients.affinity import Conversations
from proxy.clients.limits import Limits
from proxy.clients.usage import ClientUsage
from proxy.deadlines import Deadlines
from proxy.metrics import ProviderMetrics
from proxy.quota import Quotas
from proxy.registry import Registry
from proxy.runtime import Live
from proxy.scheduler import Scheduler
from proxy.state.shared import LocalState
from proxy.status.recent import RecentErrors

LIVE = web.AppKey("live", Live)
SCHEDULER = web.AppKey("scheduler", Scheduler)
METRICS = web.AppKey("metrics", ProviderMetrics)
REGISTRY = web.AppKey("registry", Registry)
DEADLINES = web.AppKey("deadlines", Deadlines)
QUOTAS = web.AppKey("quotas", Quotas)
STATE = web.AppKey("state", LocalState)
LIMITS = web.AppKey("limits", Limits)
CLIENT_USAGE = web.AppKey("client_usage", ClientUsage)
CONVERSATIONS = web.AppKey("conversations", Conversations)
RECENT_ERRORS = web.AppKey("recent_errors", RecentErrors)
