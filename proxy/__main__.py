"""The command line: `keyrail serve | check | models | plugins` (also `python -m proxy`).

Owns: argument parsing, finding the config file, logging set-up, the refusal to bind a public
address without client keys, and running the server on uvloop. Does not own: anything the
server does once it runs (app.py lists that).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from proxy import config
from proxy.errors import ConfigError, DriverError
from proxy.registry import Registry, options_lookup

log = logging.getLogger("keyrail")


def _load(path_arg: str | None, registry: Registry) -> config.Settings:
    path = config.default_path(path_arg)
    lookup = options_lookup(registry)
    if path is None:
        return config.builtin_default(lookup)
    return config.load(path, lookup)


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    if not debug:
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(_one_line_protocol_errors)


def _one_line_protocol_errors(record: logging.LogRecord) -> bool:
    """A malformed request from a client is worth a line, not a traceback at ERROR."""
    from aiohttp.http_exceptions import HttpProcessingError

    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, HttpProcessingError):
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = f"{record.getMessage()}: {exc.message.splitlines()[0] if exc.message else exc}"
        record.args, record.exc_info, record.exc_text = None, None, None
    return True


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from proxy.app import create_app

    registry = Registry.discover()
    try:
        settings = _load(args.config, registry)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 1
    overrides = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if overrides:
        import dataclasses

        settings = dataclasses.replace(settings, **overrides)
    _setup_logging(settings.debug)
    for warning in settings.warnings:
        log.warning("%s", warning)
    if not settings.providers:
        log.warning(
            "no provider blocks: write a config.yaml (see config/config.example.yaml) "
            "or set OPENAI_API_KEY for the built-in default"
        )
    problem = config.bind_problem(settings)
    if problem:
        log.error("%s", problem)
        return 2
    log.info(
        "keyrail on http://%s:%d (config: %s; %d provider blocks)",
        settings.host, settings.port, settings.source, len(settings.providers),
    )  # fmt: skip
    app = create_app(settings, registry)
    loop = _new_loop()
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        loop=loop,
        handler_cancellation=True,  # a client that leaves cancels its upstream request at once
        shutdown_timeout=settings.shutdown_drain_seconds,
        access_log=None,  # keyrail writes its own access line (proxy/logs.py)
        print=None,
    )
    return 0


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def cmd_check(args: argparse.Namespace) -> int:
    registry = Registry.discover()
    try:
        settings = _load(args.config, registry)
    except ConfigError as exc:
        print("\n".join(exc.problems))
        return 1
    for warning in settings.warnings:
        print(f"warning: {warning}")
    problems = []
    for block in settings.providers:
        try:
            registry.get(block.driver)
        except DriverError as exc:
            problems.append(f"{block.where}: {exc.message}")
    if problems:
        print("\n".join(problems))
        return 1
    print(f"{settings.source}: OK ({len(settings.providers)} provider blocks)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """The routing table: client id → block, upstream model, credentials; collisions marked."""
    from proxy import catalog as catalog_mod

    registry = Registry.discover()
    try:
        settings = _load(args.config, registry)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 1
    credentials = {}
    unlisted = []
    for block in settings.providers:
        if block.disabled:
            continue
        credentials[block.name] = registry.get(block.driver).credentials(block)
        if not block.models:
            unlisted.append(block.name)
    cat = catalog_mod.build(settings, credentials, {})
    rows = []
    for mid, route in sorted(cat.routes.items()):
        mark = " [pool: " + ", ".join(route.providers) + "]" if mid in cat.collisions else ""
        seen: dict[tuple[str, str], list[str]] = {}
        for t in route.targets:
            seen.setdefault((t.provider, t.upstream_model), []).append(t.credential.id)
        for (provider, upstream), creds in seen.items():
            rows.append((mid + mark, provider, upstream, ", ".join(creds)))
    width = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(
        ("MODEL", "PROVIDER", "UPSTREAM", "CREDENTIALS"))]  # fmt: skip
    fmt = "  ".join(f"{{:<{w}}}" for w in width)
    print(fmt.format("MODEL", "PROVIDER", "UPSTREAM", "CREDENTIALS"))
    for row in rows:
        print(fmt.format(*row))
    for ex in cat.excluded:
        print(f"excluded: {ex.model} from {ex.provider} (matches '{ex.pattern}')")
    for name in unlisted:
        print(f"note: {name} lists no models; they are discovered from the upstream at start-up")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    infos = Registry.discover().describe()
    print(f"{'NAME':<24} {'CLASS':<48} DISTRIBUTION")
    for info in infos:
        print(f"{info.name:<24} {info.target:<48} {info.distribution} {info.version}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keyrail", description="LLM API proxy")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument(
        "-c", "--config", help="config file (default: $KEYRAIL_CONFIG, ./config.yaml)"
    )
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)
    check = sub.add_parser("check", help="validate a config file offline")
    check.add_argument("-c", "--config")
    check.set_defaults(func=cmd_check)
    models = sub.add_parser("models", help="print the routing table")
    models.add_argument("-c", "--config")
    models.set_defaults(func=cmd_models)
    plugins = sub.add_parser("plugins", help="list the installed drivers")
    plugins.set_defaults(func=cmd_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
