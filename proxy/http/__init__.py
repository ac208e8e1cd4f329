"""The HTTP surface: what every request goes through, and the routes that are not a component's
own.

    pipeline.py       around every handler, in order: drain, access line, error bodies in the
                      route's dialect, runtime pin, client keys
    handlers.py       /health, /v1/models and the POST endpoints (routing, failover, relay)
    request_shape.py  the client's JSON checked once: the field types drivers read
    management.py     /v0/management/*, behind remote-management.secret-key

Components that own data register their own views (metrics.py, status/, dialects/routes.py)
through the pipeline's `wrap`; nothing here is imported by a module that only holds data.
"""
