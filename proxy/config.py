"""config.yaml → frozen, typed settings, with errors that point at FILE:LINE:COL.

Owns: the schema of every top-level key (spelt as CLIProxyAPI spells them), defaults,
`${ENV}` expansion, validation with "did you mean", the provider blocks (any top-level key that
names an installed driver), where the config file is looked for, and the built-in default used
when there is no file. Does not own: what the settings do (every other module), nor which
drivers exist (registry.py answers `driver_options`).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from proxy.errors import ConfigError

DEFAULT_PORT = 8317
#: Client keys shipped in example files; refused on a public address (CLIProxyAPI #3376).
PLACEHOLDER_KEYS = frozenset(
    {"your-api-key-1", "your-api-key-2", "your-api-key-3", "change-me", "sk-keyrail-change-me"}
)
#: CLIProxyAPI keys keyrail reads but does not act on: accepted with a warning, so old files load.
IGNORED_KEYS = frozenset(
    {
        "auth-dir", "usage-statistics-enabled", "logging-to-file", "logs-max-total-size-mb",
        "error-logs-max-files", "request-log", "commercial-mode", "incognito-browser", "ws-auth",
        "quota-exceeded", "pprof", "nonstream-keepalive-interval", "oauth-model-alias",
        "oauth-excluded-models", "oauth-upstream", "payload", "plugins",
        "auth-auto-refresh-workers",
        "save-cooldown-status", "redis-usage-queue-retention-seconds", "kiro-preferred-endpoint",
        "kiro-fingerprint", "claude-header-defaults", "codex-header-defaults",
        "disable-image-generation", "responses-compact-enabled", "responses-websocket-enabled",
        "gemini-api-key", "claude-api-key", "codex-api-key", "vertex-api-key", "amp-code",
    }
)  # fmt: skip
#: Fields every provider block item accepts, whatever its driver.
COMMON_BLOCK_KEYS: Mapping[str, type | tuple[type, ...]] = {
    "name": str,
    "prefix": str,
    "priority": int,
    "disabled": bool,
    "models": list,
    "excluded-models": list,
    "headers": dict,
    "proxy-url": str,
    "disable-cooling": bool,
    "base-url": str,
    "refresh-url": str,
}
#: Keys of an `api-key-entries` item (CLIProxyAPI's spelling, plus `disable-cooling`).
API_KEY_ENTRY_KEYS = frozenset({"api-key", "proxy-url", "disable-cooling"})
#: Keys whose value is a URL, and the schemes each accepts.
_URL_SCHEMES = {
    "base-url": ("http://", "https://"),
    "refresh-url": ("http://", "https://"),
    "proxy-url": ("http://", "https://", "socks5://", "socks5h://"),
}


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One `models:` item: the upstream `name`, the client-facing `alias` (default: name)."""

    name: str
    alias: str
    force_mapping: bool = False


@dataclass(frozen=True, slots=True)
class ProviderBlock:
    """One item of a provider block (e.g. one `openai-compatibility:` list entry)."""

    driver: str
    name: str
    prefix: str = ""
    priority: int = 0
    disabled: bool = False
    models: tuple[ModelEntry, ...] = ()
    excluded_models: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    proxy_url: str | None = None
    disable_cooling: bool | None = None
    base_url: str = ""
    refresh_url: str = ""
    #: The driver's own keys (as spelt in the file, e.g. "api-key-entries"), validated.
    options: Mapping[str, Any] = field(default_factory=dict)
    #: "FILE:LINE" of the item, for messages.
    where: str = ""


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """One `api-keys` item written as a mapping: a client's key, name, scope and limits.

    A plain string item is a key with no name, scope or limits, and is not one of these.
    Limits of None are unlimited. `models` are case-insensitive `*` globs over client model
    ids (empty: every model).
    """

    key: str
    name: str
    models: tuple[str, ...] = ()
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    daily_tokens: int | None = None


#: Where a conversation's id is looked for when `routing.session-affinity` is on, in order:
#: `header:NAME`, or `body:a.b.c` (a step into a string holding JSON parses it). What Claude
#: Code and Codex CLI send (shared/protocols/agents.md); none found: a hash of the system
#: prompt and the first user message.
DEFAULT_SESSION_SOURCES = (
    "header:x-claude-code-session-id",
    "body:metadata.user_id.session_id",
    "header:session-id",
    "header:x-session-id",
    "body:prompt_cache_key",
    "body:conversation_id",
)


@dataclass(frozen=True, slots=True)
class Settings:
    """The whole configuration. Immutable: a reload builds a new one."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    #: every client key, plain or scoped (scoped ones are also in `clients`)
    api_keys: tuple[str, ...] = ()
    #: the `api-keys` items written as mappings: named clients with scope and limits
    clients: tuple[ClientSpec, ...] = ()
    force_model_prefix: bool = False
    request_retry: int = 3
    max_retry_interval: float = 30.0
    max_retry_credentials: int = 0
    transient_error_cooldown_seconds: float = 60.0
    max_cooldown_seconds: float = 1800.0
    disable_cooling: bool = False
    routing_strategy: str = "round-robin"
    session_affinity: bool = False
    session_ttl_seconds: float = 3600.0
    session_sources: tuple[str, ...] = DEFAULT_SESSION_SOURCES
    session_max_bindings: int = 100_000
    keepalive_seconds: float = 15.0
    passthrough_headers: bool = False
    debug: bool = False
    proxy_url: str = ""
    management_secret: str = ""
    management_allow_remote: bool = False
    log_format: str = "text"
    metrics_window_seconds: int = 600
    metrics_require_key: bool = False
    request_body_limit_mb: float = 32.0
    #: an upstream's answer, after decompression (non-streamed bodies and whole streams alike)
    upstream_body_limit_mb: float = 64.0
    sse_event_limit_mb: float = 16.0
    sse_line_limit_mb: float = 16.0
    connect_timeout: float = 10.0
    first_byte_timeout: float = 600.0
    idle_timeout: float = 300.0
    request_read_timeout: float = 60.0
    shutdown_drain_seconds: float = 30.0
    #: processes serving one port (`keyrail serve --workers N`; supervisor.py)
    workers: int = 1
    #: where state shared by workers and instances lives: "memory" (this process only) or a
    #: Redis URL (`redis://`, `rediss://`, `unix://`; proxy/state/)
    state: str = "memory"
    fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    providers: tuple[ProviderBlock, ...] = ()
    #: Where it came from: a path, or "<default>".
    source: str = "<default>"
    #: Non-fatal findings (ignored CLIProxyAPI keys, ...), logged at start-up.
    warnings: tuple[str, ...] = ()


# key path → (Settings attribute, accepted type(s), extra check)
_Check = Callable[[Any], str | None]


def _one_of(*choices: str) -> _Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _at_least(low: float) -> _Check:
    return lambda v: None if v >= low else f"must be at least {low:g}"


def _port(v: Any) -> str | None:
    return None if 0 <= v <= 65535 else "must be a port number (0-65535)"


STATE_SCHEMES = ("redis://", "rediss://", "unix://")


def _state(v: Any) -> str | None:
    if v == "memory" or (v.startswith(STATE_SCHEMES) and len(v) > len("unix://")):
        return None
    return "must be 'memory' or a Redis URL (redis://HOST:PORT/DB, rediss://..., unix://PATH)"


_NUM = (int, float)
_SCALARS: dict[str, tuple[str, type | tuple[type, ...], _Check | None]] = {
    "host": ("host", str, None),
    "port": ("port", int, _port),
    "force-model-prefix": ("force_model_prefix", bool, None),
    "request-retry": ("request_retry", int, _at_least(0)),
    "max-retry-interval": ("max_retry_interval", _NUM, _at_least(0)),
    "max-retry-credentials": ("max_retry_credentials", int, _at_least(0)),
    "transient-error-cooldown-seconds": ("transient_error_cooldown_seconds", _NUM, None),
    "max-cooldown-seconds": ("max_cooldown_seconds", _NUM, _at_least(1)),
    "disable-cooling": ("disable_cooling", bool, None),
    "routing.strategy": ("routing_strategy", str, _one_of("round-robin", "fill-first")),
    "routing.session-affinity": ("session_affinity", bool, None),
    "routing.session-ttl-seconds": ("session_ttl_seconds", _NUM, _at_least(1)),
    "routing.session-max-bindings": ("session_max_bindings", int, _at_least(1)),
    "streaming.keepalive-seconds": ("keepalive_seconds", _NUM, _at_least(0)),
    "passthrough-headers": ("passthrough_headers", bool, None),
    "debug": ("debug", bool, None),
    "proxy-url": ("proxy_url", str, None),
    "remote-management.secret-key": ("management_secret", str, None),
    "remote-management.allow-remote": ("management_allow_remote", bool, None),
    "logging.format": ("log_format", str, _one_of("text", "json")),
    "metrics.window-seconds": ("metrics_window_seconds", int, _at_least(10)),
    "metrics.require-api-key": ("metrics_require_key", bool, None),
    "limits.request-body-mb": ("request_body_limit_mb", _NUM, _at_least(0.001)),
    "limits.upstream-body-mb": ("upstream_body_limit_mb", _NUM, _at_least(0.001)),
    "limits.sse-event-mb": ("sse_event_limit_mb", _NUM, _at_least(0.001)),
    "limits.sse-line-mb": ("sse_line_limit_mb", _NUM, _at_least(0.001)),
    "timeouts.connect-seconds": ("connect_timeout", _NUM, _at_least(0.001)),
    "timeouts.first-byte-seconds": ("first_byte_timeout", _NUM, _at_least(0.001)),
    "timeouts.idle-seconds": ("idle_timeout", _NUM, _at_least(0.001)),
    "timeouts.request-read-seconds": ("request_read_timeout", _NUM, _at_least(0.001)),
    "shutdown.drain-seconds": ("shutdown_drain_seconds", _NUM, _at_least(0)),
    "workers": ("workers", int, _at_least(1)),
    "state": ("state", str, _state),
}
_SECTIONS = {"routing", "streaming", "remote-management", "logging", "metrics", "limits",
             "timeouts", "shutdown"}  # fmt: skip
_SECTION_EXTRAS = {  # accepted for CLIProxyAPI files, not acted on
    "streaming": {"bootstrap-retries"},
    "remote-management": {"disable-control-panel", "disable-auto-update-panel",
                          "panel-github-repository"},
}  # fmt: skip
_LISTS = {"api-keys", "fallbacks"}
#: Every key that belongs at the top of the file (for the hint when one is in a block).
_TOP_LEVEL = {k.split(".")[0] for k in _SCALARS} | _LISTS | _SECTIONS
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

#: The driver registry's answer for a config key: its option types, required keys and default
#: base URL; None when no installed driver has that name.
DriverOptions = Callable[[str], "tuple[Mapping[str, Any], frozenset[str], str] | None"]


class _Problems:
    """Collects `FILE:LINE:COL: message` lines."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []
        self.warnings: list[str] = []

    def at(self, node: Any, key: Any) -> str:
        line, col = _position(node, key)
        return f"{self.source}:{line}:{col}"

    def add(self, node: Any, key: Any, message: str) -> None:
        self.lines.append(f"{self.at(node, key)}: {message}")

    def warn(self, node: Any, key: Any, message: str) -> None:
        self.warnings.append(f"{self.at(node, key)}: {message}")


def _position(node: Any, key: Any) -> tuple[int, int]:
    lc = getattr(node, "lc", None)
    if lc is None:
        return (0, 0)
    try:
        if isinstance(node, CommentedMap) and key is not None:
            line, col = lc.key(key)
        elif isinstance(node, CommentedSeq) and key is not None:
            line, col = lc.item(key)
        else:
            line, col = lc.line, lc.col
    except (KeyError, IndexError, TypeError):
        line, col = lc.line, lc.col
    if line is None or col is None:  # ruamel keeps no position for some flow-style nodes
        return (0, 0)
    return (line + 1, col + 1)


def _did_you_mean(key: str, known: Iterator[str] | list[str] | set[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a mapping"}  # fmt: skip
    if isinstance(t, tuple):
        return "a number" if set(t) == {int, float} else " or ".join(names[x] for x in t)
    return names.get(t, t.__name__)


def _type_ok(value: Any, expected: type | tuple[type, ...]) -> bool:
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) and bool not in types:
        return False  # yaml `true` is not a number
    return isinstance(value, types)


def _expand_env(value: Any, problems: _Problems, node: Any, key: Any) -> Any:
    """`${VAR}` and `${VAR:-default}` in strings; an unset variable is an error."""
    if isinstance(value, str) and "${" in value:

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            problems.add(node, key, f"environment variable {name} is not set")
            return ""

        return _ENV_REF.sub(sub, value)
    if isinstance(value, CommentedMap):
        for k in list(value):
            value[k] = _expand_env(value[k], problems, value, k)
    elif isinstance(value, CommentedSeq):
        for i in range(len(value)):
            value[i] = _expand_env(value[i], problems, value, i)
    return value


def default_path(explicit: str | None) -> Path | None:
    """`-c FILE`, else `$KEYRAIL_CONFIG`, else `./config.yaml`, else None (built-in default)."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("KEYRAIL_CONFIG")
    if env:
        return Path(env)
    here = Path("config.yaml")
    return here if here.is_file() else None


def builtin_default(driver_options: DriverOptions) -> Settings:
    """No file: loopback only, no client keys, an `openai` block from OPENAI_API_KEY."""
    providers: list[ProviderBlock] = []
    key = os.environ.get("OPENAI_API_KEY", "")
    if key:
        base = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1")
        providers.append(
            ProviderBlock(
                driver="openai-compatibility",
                name="openai",
                base_url=base,
                options={"api-key-entries": ({"api-key": key},)},
                where="$OPENAI_API_KEY",
            )
        )
    return Settings(host="127.0.0.1", providers=tuple(providers), source="<default>")


def load(path: str | Path, driver_options: DriverOptions) -> Settings:
    """Read and validate a config file. Raises `ConfigError` with every problem found."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{source}:0:0: no such file"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{source}:0:0: is a directory, not a config file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{source}:0:0: cannot read: {exc}"]) from None
    return parse(text, driver_options, source=source)


def parse(text: str, driver_options: DriverOptions, *, source: str = "<string>") -> Settings:
    """Validate YAML text into `Settings`."""
    problems = _Problems(source)
    yaml = YAML(typ="rt")
    try:
        doc = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise ConfigError([f"{source}:{line}:{col}: invalid YAML: {exc.problem}"]) from None
    except Exception as exc:  # ruamel raises a few non-Marked errors (duplicate keys, ...)
        raise ConfigError([f"{source}:0:0: invalid YAML: {exc}"]) from None
    if doc is None:
        doc = CommentedMap()
    if not isinstance(doc, CommentedMap):
        raise ConfigError([f"{source}:1:1: the top level must be a mapping of keys"])
    doc = _expand_env(doc, problems, None, None)

    values: dict[str, Any] = {}
    providers: list[ProviderBlock] = []
    names_seen: dict[str, int] = {}
    known_top = _TOP_LEVEL
    for key in doc:
        value = doc[key]
        if not isinstance(key, str):
            problems.add(doc, key, f"key {key!r} must be a string")
        elif key in _SECTIONS:
            _read_section(doc, key, value, values, problems)
        elif key in _SCALARS:
            _read_scalar(doc, key, key, value, values, problems)
        elif key == "api-keys":
            values["api_keys"], values["clients"] = _read_api_keys(doc, key, value, problems)
        elif key == "fallbacks":
            values["fallbacks"] = _read_fallbacks(doc, key, value, problems)
        elif (opts := driver_options(key)) is not None:
            blocks = list(_read_blocks(doc, key, value, opts, names_seen, problems))
            _check_blocks(driver_options, key, blocks, problems)
            providers.extend(blocks)
        elif key in IGNORED_KEYS:
            problems.warn(doc, key, f"'{key}' is a CLIProxyAPI setting keyrail ignores")
        else:
            hint = _did_you_mean(key, known_top | _driver_names(driver_options))
            problems.add(doc, key, f"unknown key '{key}'{hint}")
    if problems.lines:
        raise ConfigError(problems.lines)
    if values.get("host") == "":
        values["host"] = "0.0.0.0"  # CLIProxyAPI: "" means every interface
    return Settings(
        **values, providers=tuple(providers), source=source, warnings=tuple(problems.warnings)
    )


def _check_blocks(
    driver_options: DriverOptions, driver: str, blocks: list[ProviderBlock], problems: _Problems
) -> None:
    """The driver's own checks of its blocks' options, beyond their types
    (`Driver.check_options`)."""
    check = getattr(driver_options, "check_options", None)
    if not callable(check):
        return
    for block in blocks:
        for message in check(driver, block):
            problems.lines.append(f"{block.where}:1: {message}")


def _driver_names(driver_options: DriverOptions) -> set[str]:
    names = getattr(driver_options, "names", None)
    return set(names()) if callable(names) else set()


def _read_section(
    doc: CommentedMap, key: str, value: Any, values: dict[str, Any], problems: _Problems
) -> None:
    if value is None:
        return
    if not isinstance(value, CommentedMap):
        problems.add(doc, key, f"'{key}' must be a mapping")
        return
    known = {k.split(".", 1)[1] for k in _SCALARS if k.startswith(key + ".")}
    if key == "routing":
        known |= {"session-affinity-ttl", "session-sources"}
    extras = _SECTION_EXTRAS.get(key, set())
    for sub in value:
        full = f"{key}.{sub}"
        if full in _SCALARS:
            _read_scalar(value, sub, full, value[sub], values, problems)
        elif full == "routing.session-affinity-ttl":  # CLIProxyAPI's spelling: "1h", "30m"
            if (seconds := _duration(value[sub])) is None:
                problems.add(value, sub, f"'{full}' must be a duration like 1h, 30m or 90s")
            else:
                values["session_ttl_seconds"] = seconds
        elif full == "routing.session-sources":
            values["session_sources"] = _read_session_sources(value, sub, problems)
        elif sub in extras:
            problems.warn(value, sub, f"'{full}' is a CLIProxyAPI setting keyrail ignores")
        else:
            problems.add(value, sub, f"unknown key '{full}'{_did_you_mean(str(sub), known)}")


def _read_scalar(
    node: Any, key: Any, full: str, value: Any, values: dict[str, Any], problems: _Problems
) -> None:
    attr, expected, check = _SCALARS[full]
    if isinstance(value, str) and expected is not str:
        value = _coerce(value, expected)  # "${PORT}" expands to a string
    if not _type_ok(value, expected):
        problems.add(node, key, f"'{full}' must be {_type_name(expected)}, not {value!r}")
        return
    if check and (msg := check(value)):
        problems.add(node, key, f"'{full}' {msg}")
        return
    if full in _URL_SCHEMES and (msg := _url_problem(full, value)):
        problems.add(node, key, msg)
        return
    values[attr] = value


def _url_problem(key: str, value: str) -> str | None:
    """A URL without its scheme (`127.0.0.1:9000/v1`) would fail every request later."""
    text = value.strip()
    schemes = _URL_SCHEMES[key]
    if not text or text.lower().startswith(schemes):
        return None
    if key == "proxy-url" and text in ("direct", "none"):
        return None  # no proxy for this block, whatever the global one says
    bare = text.split("://", 1)[-1]
    return (
        f"'{key}' must be a URL starting with {' or '.join(schemes)}, not {value!r} "
        f"(did you mean 'http://{bare}'?)"
    )


def _coerce(value: str, expected: type | tuple[type, ...]) -> Any:
    types = expected if isinstance(expected, tuple) else (expected,)
    text = value.strip()
    if bool in types and text.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return text.lower() in ("true", "yes", "on", "1")
    for t in (int, float):
        if t in types:
            try:
                return t(text)
            except ValueError:
                pass
    return value


#: the keys of an `api-keys` mapping item, and the type each takes
_CLIENT_KEYS: dict[str, type | tuple[type, ...]] = {
    "key": str, "name": str, "models": list, "rpm": int, "tpm": int, "max-concurrent": int,
    "daily-tokens": int,
}  # fmt: skip
#: keys shorter than this are accepted with a warning: easy to guess
SHORT_KEY = 16


def _read_api_keys(
    doc: CommentedMap, key: str, value: Any, problems: _Problems
) -> tuple[tuple[str, ...], tuple[ClientSpec, ...]]:
    """`api-keys`: every key (plain and scoped), and the scoped clients."""
    if value is None:
        return (), ()
    if not isinstance(value, list):
        problems.add(doc, key, "'api-keys' must be a list of keys or client mappings")
        return (), ()
    keys: dict[str, int] = {}  # key -> its item's index
    clients: list[ClientSpec] = []
    names: set[str] = set()
    for i, item in enumerate(value):
        if isinstance(item, CommentedMap):
            spec = _read_client(value, i, item, problems)
            if spec is None:
                continue
            if spec.name in names:
                problems.add(item, "name", f"client name '{spec.name}' is used twice")
            names.add(spec.name)
            secret = spec.key
        elif isinstance(item, str) and item.strip():
            spec, secret = None, item.strip()
        else:
            problems.add(value, i, "each 'api-keys' item must be a key or a mapping with 'key'")
            continue
        if secret in keys:
            first = keys[secret]
            message = f"this key is the same as 'api-keys' item {first + 1}"
            if spec is None and isinstance(value[first], str):
                # Two plain copies mean the same thing: CLIProxyAPI files have them, so they load.
                problems.warn(value, i, message + " (the copy is ignored)")
            else:  # which client's scope and limits would apply? Refused.
                problems.add(value, i, message)
            continue
        keys[secret] = i
        if len(secret) < SHORT_KEY and secret not in PLACEHOLDER_KEYS:  # those are refused
            problems.warn(
                value, i, f"client key shorter than {SHORT_KEY} characters: easy to guess"
            )
        if spec is not None:
            clients.append(spec)
    return tuple(keys), tuple(clients)


def _read_client(
    seq: Any, index: int, item: CommentedMap, problems: _Problems
) -> ClientSpec | None:
    fields: dict[str, Any] = {}
    for k in item:
        v = item[k]
        expected = _CLIENT_KEYS.get(str(k))
        if expected is None:
            hint = _did_you_mean(str(k), set(_CLIENT_KEYS))
            problems.add(item, k, f"unknown key '{k}' in an 'api-keys' item{hint}")
            continue
        if isinstance(v, str) and expected is int:
            v = _coerce(v, int)  # "${RPM}" expands to a string
        if k == "models" and isinstance(v, str):
            v = [v]
        if not _type_ok(v, expected):
            problems.add(item, k, f"'{k}' must be {_type_name(expected)}, not {v!r}")
        elif expected is int and v < 1:
            problems.add(item, k, f"'{k}' must be at least 1 (leave it out for no limit)")
        elif k == "models" and not all(isinstance(m, str) and m.strip() for m in v):
            problems.add(item, k, "'models' must be a list of model ids or '*' globs")
        else:
            fields[str(k)] = v
    secret = str(fields.get("key", "")).strip()
    if not secret:
        if "key" in item:
            problems.add(item, "key", "'key' must be a non-empty string")
        else:
            problems.add(seq, index, "an 'api-keys' mapping needs 'key' (the client's key)")
        return None
    name = str(fields.get("name", "")).strip() or default_client_name(secret)
    return ClientSpec(
        key=secret,
        name=name,
        models=tuple(str(m).strip() for m in fields.get("models", ())),
        rpm=fields.get("rpm"),
        tpm=fields.get("tpm"),
        max_concurrent=fields.get("max-concurrent"),
        daily_tokens=fields.get("daily-tokens"),
    )


def default_client_name(key: str) -> str:
    """The name of a client mapping without one: from a digest of its key, never the key."""
    return "client-" + hashlib.sha256(key.encode()).hexdigest()[:8]


_SESSION_SOURCE = re.compile(r"^(header:[!#$%&'*+\-.^_`|~0-9A-Za-z]+|body:[\w-]+(\.[\w-]+)*)$")


def _read_session_sources(node: CommentedMap, key: str, problems: _Problems) -> tuple[str, ...]:
    value = node[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.add(node, key, "'routing.session-sources' must be a list of strings")
        return DEFAULT_SESSION_SOURCES
    out: list[str] = []
    for i, source in enumerate(value):
        source = source.strip()
        if not _SESSION_SOURCE.match(source):
            problems.add(
                value, i, f"session source {source!r} must be 'header:NAME' or 'body:field.path'"
            )
        else:
            kind, _, rest = source.partition(":")
            out.append(f"{kind}:{rest.lower()}" if kind == "header" else source)
    return tuple(out)


#: a Go duration as CLIProxyAPI writes one: "1h", "30m", "90s", "1h30m", "500ms"
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(value: Any) -> float | None:
    """Seconds of a duration ("1h", "30m", "1h30m") or a plain number of seconds; None when
    it is neither or not positive."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if _DURATION.fullmatch(text):
            value = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))
        else:
            try:
                value = float(text)
            except ValueError:
                return None
    if not isinstance(value, int | float) or value <= 0:
        return None
    return float(value)


def _read_fallbacks(
    doc: CommentedMap, key: str, value: Any, problems: _Problems
) -> dict[str, tuple[str, ...]]:
    if value is None:
        return {}
    if not isinstance(value, CommentedMap):
        problems.add(doc, key, "'fallbacks' must map a model id or glob to a list of model ids")
        return {}
    out: dict[str, tuple[str, ...]] = {}
    for pattern in value:
        targets = value[pattern]
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            problems.add(value, pattern, f"fallbacks for '{pattern}' must be a list of model ids")
            continue
        out[str(pattern)] = tuple(targets)
    return out


def _read_blocks(
    doc: CommentedMap,
    driver: str,
    value: Any,
    opts: tuple[Mapping[str, Any], frozenset[str], str],
    names_seen: dict[str, int],
    problems: _Problems,
) -> Iterator[ProviderBlock]:
    if value is None:
        return
    if isinstance(value, CommentedMap):
        value = CommentedSeq([value])  # one block written as a mapping: accept it
    if not isinstance(value, list):
        problems.add(doc, driver, f"'{driver}' must be a list of provider blocks")
        return
    options, required, default_base = opts
    allowed: dict[str, Any] = {**COMMON_BLOCK_KEYS, **options}
    for i, item in enumerate(value):
        if not isinstance(item, CommentedMap):
            problems.add(value, i, f"each '{driver}' item must be a mapping")
            continue
        where = f"{problems.source}:{_position(value, i)[0]}"
        fields: dict[str, Any] = {}
        driver_opts: dict[str, Any] = {}
        for k in item:
            v = item[k]
            if k not in allowed:
                if k in _TOP_LEVEL:
                    hint = (
                        f": '{k}' is a top-level key, not a block key; move it to the top of "
                        "the file, without indentation"
                    )
                else:
                    hint = _did_you_mean(str(k), set(allowed))
                problems.add(item, k, f"unknown key '{k}' in a '{driver}' block{hint}")
                continue
            expected = allowed[k]
            if isinstance(v, str) and expected is not str:
                v = _coerce(v, expected)
            if v is None:
                continue
            if not _type_ok(v, expected):
                problems.add(item, k, f"'{k}' must be {_type_name(expected)}, not {v!r}")
                continue
            if k in _URL_SCHEMES and isinstance(v, str) and (msg := _url_problem(k, v)):
                problems.add(item, k, msg)
                continue
            if k == "api-key-entries" and isinstance(v, list):
                _check_api_key_entries(v, problems)
            if k in COMMON_BLOCK_KEYS:
                fields[k] = v
            else:
                driver_opts[k] = _plain(v)
        for req in sorted(required):
            if req == "base-url" and default_base:
                continue
            if req not in fields and req not in driver_opts and req not in item:
                problems.add(value, i, f"a '{driver}' block needs '{req}'")
        name = str(fields.get("name") or driver).strip()
        if "name" not in fields:
            count = names_seen.get(name, 0)
            names_seen[name] = count + 1
            if count:
                name = f"{name}-{count + 1}"
        elif name in names_seen:
            problems.add(item, "name", f"provider name '{name}' is used twice")
        else:
            names_seen[name] = 1
        prefix = str(fields.get("prefix", "")).strip().strip("/")
        if "/" in prefix:
            problems.add(item, "prefix", f"prefix '{prefix}' may not contain '/'")
        yield ProviderBlock(
            driver=driver,
            name=name,
            prefix=prefix,
            priority=int(fields.get("priority", 0)),
            disabled=bool(fields.get("disabled", False)),
            models=_read_models(item, fields.get("models"), problems),
            excluded_models=tuple(
                str(p).strip().lower() for p in fields.get("excluded-models", []) if str(p).strip()
            ),
            headers=_read_headers(item, fields.get("headers"), problems),
            proxy_url=fields.get("proxy-url") or None,
            disable_cooling=fields.get("disable-cooling"),
            base_url=str(fields.get("base-url", "")).strip(),
            refresh_url=str(fields.get("refresh-url", "")).strip(),
            options=driver_opts,
            where=where,
        )


def _check_api_key_entries(entries: list[Any], problems: _Problems) -> None:
    """Each item a mapping with `api-key` (a misspelt key would make a keyless credential)."""
    for i, entry in enumerate(entries):
        if not isinstance(entry, CommentedMap):
            problems.add(
                entries, i, "each 'api-key-entries' item must be a mapping: write '- api-key: …'"
            )
            continue
        misspelt = False
        for k in entry:
            if k not in API_KEY_ENTRY_KEYS:
                misspelt = True
                hint = _did_you_mean(str(k), set(API_KEY_ENTRY_KEYS))
                problems.add(entry, k, f"unknown key '{k}' in an 'api-key-entries' item{hint}")
            elif (
                k == "proxy-url"
                and isinstance(entry[k], str)
                and (msg := _url_problem("proxy-url", entry[k]))
            ):
                problems.add(entry, k, msg)
        if "api-key" not in entry and not misspelt:
            problems.add(
                entries,
                i,
                "an 'api-key-entries' item needs 'api-key' (write api-key: \"\" for an "
                "upstream that takes no key)",
            )


def _read_models(item: CommentedMap, value: Any, problems: _Problems) -> tuple[ModelEntry, ...]:
    if not value:
        return ()
    entries: list[ModelEntry] = []
    for i, m in enumerate(value):
        if isinstance(m, str):
            entries.append(ModelEntry(name=m, alias=m))
            continue
        if not isinstance(m, CommentedMap):
            problems.add(value, i, "each 'models' item must be a mapping with 'name'")
            continue
        for k in m:
            if k not in ("name", "alias", "force-mapping"):
                hint = _did_you_mean(str(k), {"name", "alias", "force-mapping"})
                problems.add(m, k, f"unknown key '{k}' in a 'models' item{hint}")
        name = m.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.add(value, i, "a 'models' item needs a 'name' (the upstream model)")
            continue
        alias = m.get("alias") or name
        if not isinstance(alias, str):
            problems.add(m, "alias", "'alias' must be a string")
            continue
        force = m.get("force-mapping", False)
        if not isinstance(force, bool):
            problems.add(m, "force-mapping", "'force-mapping' must be a boolean")
            force = False
        entries.append(ModelEntry(name=name.strip(), alias=alias.strip(), force_mapping=force))
    return tuple(entries)


_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _read_headers(item: CommentedMap, value: Any, problems: _Problems) -> dict[str, str]:
    if not value:
        return {}
    headers: dict[str, str] = {}
    for k in value:
        v = value[k]
        if not isinstance(k, str) or not _HEADER_NAME.match(k):
            problems.add(value, k, f"header name {k!r} is not a valid HTTP header name")
        elif not isinstance(v, str | int | float) or any(c in str(v) for c in "\r\n\0"):
            problems.add(value, k, f"header '{k}' must be a one-line string")
        else:
            headers[k] = str(v).strip()
    return headers


def _plain(value: Any) -> Any:
    """ruamel's commented containers → plain, immutable-ish Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    return value


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def bind_problem(settings: Settings) -> str | None:
    """Why keyrail must not bind where the settings say, or None.

    A public address needs client keys, and not the placeholder keys of example files.
    """
    if is_loopback(settings.host):
        return None
    if not settings.api_keys:
        return (
            f"refusing to listen on {settings.host}:{settings.port} without client keys: "
            "set 'api-keys' in the config, or bind to 127.0.0.1"
        )
    placeholders = PLACEHOLDER_KEYS.intersection(settings.api_keys)
    if placeholders:
        return (
            f"refusing to listen on {settings.host}:{settings.port} with the example file's "
            "placeholder client keys: replace them in 'api-keys'"
        )
    return None


#: Shorter management secrets are refused where other hosts can reach the management API.
MIN_MANAGEMENT_SECRET = 32


def management_problem(settings: Settings) -> str | None:
    """Why the management secret must not be used where other hosts can reach it, or None."""
    secret = settings.management_secret
    if not secret or len(secret) >= MIN_MANAGEMENT_SECRET:
        return None
    if settings.management_allow_remote and not is_loopback(settings.host):
        return (
            f"'remote-management.secret-key' has {len(secret)} characters: with "
            f"'allow-remote: true' on {settings.host} it must have at least "
            f"{MIN_MANAGEMENT_SECRET} (e.g. `openssl rand -hex 24`)"
        )
    return None


def management_warning(settings: Settings) -> str | None:
    """A short management secret that only this host can use: allowed, but said."""
    secret = settings.management_secret
    if not secret or len(secret) >= MIN_MANAGEMENT_SECRET or management_problem(settings):
        return None
    return (
        f"'remote-management.secret-key' has {len(secret)} characters; use at least "
        f"{MIN_MANAGEMENT_SECRET} (e.g. `openssl rand -hex 24`): keyrail refuses a shorter one "
        "once management is reachable from other hosts"
    )


def workers_problem(settings: Settings) -> str | None:
    """Why `workers` cannot run with this `state`, or None.

    Several workers keep apart whatever is in memory: each would cool its own credentials,
    count its own client limits and show its own slice of the metrics. They need shared state.
    """
    if settings.workers > 1 and settings.state == "memory":
        return (
            f"workers: {settings.workers} needs shared state: set 'state: redis://HOST:6379/0' "
            "(the workers then share cooldowns, client limits and metrics), or run one worker"
        )
    return None
