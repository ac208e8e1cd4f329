"""Clients: who calls keyrail, what each may call, how much, and where its conversations go.

- keys.py: a configured client (name, model scope, limits) as the request path sees it;
- limits.py: admitting a request against its client's limits, and settling its tokens after;
- usage.py: what each named client did (`/v1/metrics/clients`, Prometheus, management);
- affinity.py: sticky sessions, a conversation's credential (`routing.session-affinity`).

A plain string key (no name, scope or limits) touches none of this: the pipeline finds no
`Client` for it and skips every step.
"""
