"""The live status page: providers, credentials, clients and recent errors at a glance.

routes.py     `GET /status` (the page) and `GET /v1/status` (its data)
snapshot.py   the data: one JSON object for one moment
recent.py     the last error answers with their request ids (filled by the pipeline)
page.html     the page: inline style and script, no external asset, no build step
"""
