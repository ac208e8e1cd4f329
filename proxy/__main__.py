"""The command line: `keyrail serve | check | models | canary | plugins` (`python -m proxy`).

Owns: argument parsing, finding the config file, logging set-up, the refusal to bind a public
address without client keys, running the server on uvloop (SIGHUP reloads the config;
SIGTERM/SIGINT stop it gracefully), and offline checks of a config file. Does not own:
anything the server does once it runs (app.py lists that), the canary itself (canary.py).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from proxy import config, logs, redact, supervisor
from proxy.catalog import Catalog
from proxy.errors import ConfigError, ProxyError
from proxy.registry import Registry, options_lookup

log = logging.getLogger("keyrail")


def _load(path_arg: str | None, registry: Registry) -> config.Settings:
    path = config.default_path(path_arg)
    lookup = options_lookup(registry)
    if path is None:
        return config.builtin_default(lookup)
    return config.load(path, lookup)


def _one_line_protocol_errors(record: logging.LogRecord) -> bool:
    """A malformed request from a client is worth a line, not a traceback at ERROR."""
    from aiohttp.http_exceptions import HttpProcessingError
    from aiohttp.web_protocol import RequestPayloadError

    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, RequestPayloadError):  # a body that lies about its Content-Encoding
        exc = exc.__cause__
    if isinstance(exc, HttpProcessingError):
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        first = exc.message.splitlines()[0] if exc.message else str(exc)
        record.msg = redact.REDACTOR.redact(f"{record.getMessage()}: {first}")
        record.args, record.exc_info, record.exc_text = None, None, None
    return True


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from proxy import reload, shutdown
    from proxy.app import create_app

    registry = Registry.discover()
    try:
        settings = _load(args.config, registry)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 1
    overrides: dict[str, object] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if overrides:
        settings = dataclasses.replace(settings, **overrides)  # type: ignore[arg-type]
    # text or JSON lines; no configured secret in any of them
    logs.configure(settings.log_format, settings.debug, redact.secrets_of(settings))
    logging.getLogger("aiohttp.server").addFilter(_one_line_protocol_errors)
    for warning in settings.warnings:
        log.warning("%s", warning)
    for block in settings.providers:
        if block.driver in registry and not block.disabled:
            for finding in registry.get(block.driver).check(block):
                log.warning("%s: %s: %s", block.where, block.name, finding)
    if not settings.providers:
        log.warning(
            "no provider blocks: write a config.yaml (see config/config.example.yaml) "
            "or set OPENAI_API_KEY for the built-in default"
        )
    if args.workers is not None:
        settings = dataclasses.replace(settings, workers=args.workers)
    if short := config.management_warning(settings):
        log.warning("%s", short)
    problem = (
        config.bind_problem(settings)
        or config.workers_problem(settings)
        or config.management_problem(settings)
    )
    if problem:
        log.error("%s", problem)
        return 2
    worker = supervisor.worker_id()
    if settings.workers > 1 and not worker:
        return _supervise(args, settings)
    log.info(
        "keyrail on http://%s:%d (config: %s; %d provider blocks)",
        settings.host, settings.port, settings.source, len(settings.providers),
    )  # fmt: skip
    app = create_app(settings, registry, config_path=config.default_path(args.config))

    async def reload_on_sighup(app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, app[reload.RELOADER].trigger, "SIGHUP")

    app.on_startup.append(reload_on_sighup)
    app.on_startup.append(_settle_gc)  # after the runtime is built (cleanup_ctx runs first)
    loop = _new_loop()
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        loop=loop,
        reuse_port=bool(worker),  # the supervisor's workers share the port (supervisor.py)
        handler_cancellation=True,  # a client that leaves cancels its upstream request at once
        # streams get `shutdown.drain-seconds` in the app's own drain; this is for the rest
        shutdown_timeout=shutdown.GRACE_SECONDS,
        access_log=None,  # keyrail writes its own access line (proxy/logs.py)
        print=None,
    )
    return 0


def _supervise(args: argparse.Namespace, settings: config.Settings) -> int:
    """`--workers N` (N > 1): the config is valid; run N workers of it (supervisor.py)."""
    from proxy import supervisor

    try:
        port = supervisor.reserve_port(settings.host, settings.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc.strerror or exc)
        return 2
    path = config.default_path(args.config)
    log.info(
        "keyrail on http://%s:%d with %d workers (config: %s; state: %s)",
        settings.host, port, settings.workers, settings.source, redact.url_label(settings.state),
    )  # fmt: skip
    argv = supervisor.worker_argv(str(path) if path else None, settings.host, port)
    boss = supervisor.Supervisor(argv, settings.workers, settings.shutdown_drain_seconds)
    return _new_loop().run_until_complete(boss.run())


async def _settle_gc(app: object) -> None:
    """Once started: move what start-up built (modules, config, drivers, catalog) out of the
    cyclic collector's sight, and collect young objects every 10,000 allocations instead of
    700. A request allocates a few hundred containers, nearly all freed by reference
    counting; with the defaults a young-generation pass ran every other request and cost
    ~5 % of the CPU per request (bench/README.md). A runtime that a reload retires is given
    back to the collector (`Runtime.retire`)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def cmd_check(args: argparse.Namespace) -> int:
    """Validate offline: exit 0, or 1 with `FILE:LINE:COL: message` lines."""
    from proxy import catalog as catalog_mod

    registry = Registry.discover()
    try:
        settings = _load(args.config, registry)
    except ConfigError as exc:
        print("\n".join(exc.problems))
        return 1
    for warning in settings.warnings:
        print(f"warning: {warning}")
    problems = []
    text = _text_of(settings.source)
    bind = config.bind_problem(settings)
    if bind:
        problems.append(f"{_key_position(settings.source, text, 'host')}: {bind}")
    if scale := config.workers_problem(settings):
        problems.append(f"{_key_position(settings.source, text, 'workers')}: {scale}")
    if short := config.management_problem(settings):
        problems.append(f"{_key_position(settings.source, text, 'remote-management')}: {short}")
    elif short := config.management_warning(settings):
        print(f"warning: {_key_position(settings.source, text, 'remote-management')}: {short}")
    credentials = {}
    for block in settings.providers:
        if block.disabled:
            continue
        try:  # what a driver reads from its block (token files, key entries) is read here too
            driver_class = registry.get(block.driver)
            credentials[block.name] = driver_class.credentials(block)
            for finding in driver_class.check(block):
                print(f"warning: {_item_position(block.where, text)}: {block.name}: {finding}")
        except (ProxyError, OSError, ValueError) as exc:
            message = exc.message if isinstance(exc, ProxyError) else str(exc)
            problems.append(f"{_item_position(block.where, text)}: {block.name}: {message}")
    if problems:
        print("\n".join(problems))
        return 1
    cat = catalog_mod.build(settings, credentials, {})
    for model, providers in sorted(cat.collisions.items()):
        print(f"note: {model} is served by several providers (one pool): {', '.join(providers)}")
    print(f"{settings.source}: OK ({len(settings.providers)} provider blocks)")
    return 0


def _text_of(source: str) -> str:
    try:
        return Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""  # the built-in default has no file


def _key_position(source: str, text: str, key: str) -> str:
    """`FILE:LINE:COL` of a top-level key (1:1 when the file does not spell it)."""
    match = re.search(rf"^{re.escape(key)}\s*:", text, re.MULTILINE)
    line = text.count("\n", 0, match.start()) + 1 if match else 1
    return f"{source}:{line}:1"


def _item_position(where: str, text: str) -> str:
    """`FILE:LINE` of a block item → `FILE:LINE:COL`, the column of the item's first key."""
    source, _, line_no = where.rpartition(":")
    if not line_no.isdigit():
        return f"{where}:0:0"
    lines = text.splitlines()
    line = lines[int(line_no) - 1] if 0 < int(line_no) <= len(lines) else ""
    col = len(line) - len(line.lstrip(" -")) + 1
    return f"{source}:{line_no}:{col}"


def cmd_models(args: argparse.Namespace) -> int:
    """The routing table: client id → block (highest priority first), upstream model,
    credentials; collisions marked. Blocks without `models` are asked for theirs, as at
    start-up, unless `--offline`."""
    from proxy import catalog as catalog_mod

    registry = Registry.discover()
    try:
        settings = _load(args.config, registry)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    unlisted = [b.name for b in settings.providers if not b.disabled and not b.models]
    disabled = [b.name for b in settings.providers if b.disabled]
    sources: dict[str, dict[str, str]] = {}  # provider → upstream name → where it came from
    if args.offline:
        credentials = {
            b.name: registry.get(b.driver).credentials(b)
            for b in settings.providers
            if not b.disabled
        }
        cat = catalog_mod.build(settings, credentials, {})
    else:
        cat, sources = asyncio.run(_built_catalog(settings, registry))
    listed = {b.name for b in settings.providers if b.models}
    rows = []
    for mid, route in sorted(cat.routes.items()):
        mark = " [pool: " + ", ".join(route.providers) + "]" if mid in cat.collisions else ""
        seen: dict[tuple[str, int, str], list[str]] = {}
        for t in sorted(route.targets, key=lambda t: -t.priority):  # tried first, first
            seen.setdefault((t.provider, t.priority, t.upstream_model), []).append(t.credential.id)
        for (provider, priority, upstream), creds in seen.items():
            source = "config" if provider in listed else sources.get(provider, {}).get(upstream)
            rows.append((mid + mark, provider, str(priority), upstream, ", ".join(creds),
                         source or "driver"))  # fmt: skip
    header = ("MODEL", "PROVIDER", "PRIORITY", "UPSTREAM", "CREDENTIALS", "SOURCE")
    width = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in width)
    print(fmt.format(*header))
    for row in rows:
        print(fmt.format(*row))
    for ex in cat.excluded:
        print(f"excluded: {ex.model} from {ex.provider} (matches '{ex.pattern}')")
    for name in unlisted:
        how = "not asked: --offline" if args.offline else "asked now, as at start and reload"
        print(f"note: {name} lists no models; its driver's list is used ({how})")
    for name in disabled:
        print(f"note: {name} is disabled; it serves no models")
    return 0


async def _built_catalog(
    settings: config.Settings, registry: Registry
) -> tuple[Catalog, dict[str, dict[str, str]]]:
    """The catalog as start-up builds it, and where each discovered name came from."""
    from proxy import runtime

    built = await runtime.build(settings, registry)
    sources = {
        name: {t.upstream_model: driver.model_source(t.upstream_model)
               for route in built.catalog.routes.values() for t in route.targets
               if t.provider == name}
        for name, driver in built.drivers.items()
    }  # fmt: skip
    await built.aclose()
    return built.catalog, sources


def cmd_login(args: argparse.Namespace) -> int:
    from drivers.cursor import auth, login  # the only provider with a browser login

    return login.main(
        args.token_file or login.DEFAULT_TOKEN_FILE,
        args.auth_url or auth.DEFAULT_AUTH_URL,
        args.login_url or auth.LOGIN_URL,
        args.poll_seconds,
    )


def cmd_canary(args: argparse.Namespace) -> int:
    from proxy import canary

    return canary.main(args.model, args.url, args.key, not args.no_stream, args.timeout)


def cmd_plugins(args: argparse.Namespace) -> int:
    infos = Registry.discover().describe()
    print(f"{'NAME':<24} {'CLASS':<48} DISTRIBUTION")
    for info in infos:
        print(f"{info.name:<24} {info.target:<48} {info.distribution} {info.version}")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keyrail", description="LLM API proxy")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument(
        "-c", "--config", help="config file (default: $KEYRAIL_CONFIG, ./config.yaml)"
    )
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument(
        "--workers", type=_positive, help="processes serving the port (default: config, 1)"
    )
    serve.set_defaults(func=cmd_serve)
    check = sub.add_parser("check", help="validate a config file offline")
    check.add_argument("-c", "--config")
    check.set_defaults(func=cmd_check)
    models = sub.add_parser("models", help="print the routing table")
    models.add_argument("-c", "--config")
    models.add_argument(
        "--offline", action="store_true", help="do not ask upstreams for unlisted models"
    )
    models.set_defaults(func=cmd_models)
    canary = sub.add_parser("canary", help="send one small request through a running keyrail")
    canary.add_argument("model", metavar="MODEL", help="client model id, e.g. 'prefix/alias'")
    canary.add_argument("--url", help="keyrail's address (default: $KEYRAIL_URL, :8317)")
    canary.add_argument("--key", help="client key (default: $KEYRAIL_API_KEY)")
    canary.add_argument("--no-stream", action="store_true", help="a non-streamed request")
    canary.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    canary.set_defaults(func=cmd_canary)
    plugins = sub.add_parser("plugins", help="list the installed drivers")
    plugins.set_defaults(func=cmd_plugins)
    login = sub.add_parser("login", help="log in to a provider in the browser (cursor)")
    login.add_argument("provider", choices=["cursor"])
    login.add_argument("--token-file", help="where to write the tokens (~/.keyrail/cursor.json)")
    login.add_argument("--auth-url", help="Cursor's auth host (default https://api2.cursor.sh)")
    login.add_argument("--login-url", help="the browser login page (default Cursor's)")
    login.add_argument("--poll-seconds", type=float, default=1.0, help=argparse.SUPPRESS)
    login.set_defaults(func=cmd_login)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
