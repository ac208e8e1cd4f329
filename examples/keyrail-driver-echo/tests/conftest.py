"""The keyrail test kit's fixtures (start_upstream_app, start_keyrail, no_secret_logged)."""

pytest_plugins = ["proxy.testing.plugin"]
