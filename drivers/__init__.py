"""keyrail's built-in drivers. Each registers under the `keyrail.drivers` entry-point group,
exactly as a third-party plugin would (see pyproject.toml)."""
