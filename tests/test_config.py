"""config.yaml: CLIProxyAPI spellings, defaults, ${ENV}, and errors that point at the line."""

from __future__ import annotations

import pytest

from proxy import config
from proxy.errors import ConfigError
from proxy.registry import Registry, options_lookup

LOOKUP = options_lookup(Registry.discover())


def parse(text: str) -> config.Settings:
    return config.parse(text, LOOKUP, source="config.yaml")


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse(text)
    return err.value.problems


def test_defaults_of_an_empty_file():
    s = parse("")
    assert (s.port, s.request_retry, s.max_retry_interval, s.max_retry_credentials) == (
        8317,
        3,
        30,
        0,
    )
    assert s.transient_error_cooldown_seconds == 60 and s.keepalive_seconds == 15
    assert s.routing_strategy == "round-robin" and s.api_keys == () and not s.force_model_prefix


def test_a_cliproxyapi_file_loads():
    s = parse(
        """
host: ""
port: 8317
api-keys: ["k1", "k2", "k1"]
debug: false
proxy-url: ""
request-retry: 3
max-retry-interval: 30
force-model-prefix: true
routing:
  strategy: fill-first
streaming:
  keepalive-seconds: 10
  bootstrap-retries: 1
auth-dir: ~/.cli-proxy-api
usage-statistics-enabled: false
remote-management:
  allow-remote: false
  secret-key: ""
openai-compatibility:
  - name: openrouter
    prefix: or
    base-url: https://openrouter.example/api/v1
    api-key-entries:
      - api-key: sk-or-1
      - api-key: sk-or-2
        proxy-url: socks5://127.0.0.1:1080
    models:
      - name: moonshotai/kimi-k2:free
        alias: kimi-k2
    headers:
      X-Title: keyrail
"""
    )
    assert s.host == "0.0.0.0" and s.api_keys == ("k1", "k2") and s.force_model_prefix
    assert s.routing_strategy == "fill-first" and s.keepalive_seconds == 10
    (block,) = s.providers
    assert (block.name, block.prefix, block.driver) == ("openrouter", "or", "openai-compatibility")
    assert block.models[0].name == "moonshotai/kimi-k2:free" and block.models[0].alias == "kimi-k2"
    assert len(block.options["api-key-entries"]) == 2 and block.headers == {"X-Title": "keyrail"}
    assert any("auth-dir" in w and "ignores" in w for w in s.warnings)


def test_unknown_key_names_line_column_and_suggests():
    (line,) = problems("port: 8317\nrequest-retyr: 2\n")
    assert line == "config.yaml:2:1: unknown key 'request-retyr' (did you mean 'request-retry'?)"


def test_misspelt_driver_block_suggests_the_driver():
    (line,) = problems("openai-compatability:\n  - base-url: http://x\n")
    assert "did you mean 'openai-compatibility'" in line and line.startswith("config.yaml:1:1:")


def test_wrong_types_and_values():
    lines = problems("port: eighty\nrouting:\n  strategy: random\nrequest-retry: -1\ndebug: 3\n")
    assert lines[0].startswith("config.yaml:1:1: 'port' must be an integer")
    assert lines[1].startswith("config.yaml:3:3: 'routing.strategy' must be one of round-robin")
    assert "config.yaml:4:1: 'request-retry' must be at least 0" in lines[2]
    assert "config.yaml:5:1: 'debug' must be a boolean" in lines[3]


def test_block_problems_point_inside_the_block():
    lines = problems(
        "openai-compatibility:\n  - name: a\n    api-key-entry: []\n  - name: b\n    base-url: http://x\n"
        "    prefix: a/b\n"
    )
    assert (
        "config.yaml:3:5: unknown key 'api-key-entry' in a 'openai-compatibility' block" in lines[0]
    )
    assert "did you mean 'api-key-entries'" in lines[0]
    assert any("needs 'base-url'" in x and x.startswith("config.yaml:2:") for x in lines)
    assert any("config.yaml:6:5: prefix 'a/b' may not contain '/'" in x for x in lines)


def test_invalid_yaml_has_a_position():
    (line,) = problems("port: 1\n  bad: [\n")
    assert line.startswith("config.yaml:") and "invalid YAML" in line


def test_env_values(monkeypatch):
    monkeypatch.setenv("KR_PORT", "9000")
    monkeypatch.setenv("KR_KEY", "secret-from-env")
    s = parse("port: ${KR_PORT}\napi-keys: ['${KR_KEY}']\nhost: ${KR_HOST:-127.0.0.1}\n")
    assert s.port == 9000 and s.api_keys == ("secret-from-env",) and s.host == "127.0.0.1"
    lines = problems("api-keys: ['${KR_MISSING_VAR}']\n")
    assert "config.yaml:1:12: environment variable KR_MISSING_VAR is not set" in lines[0]


def test_repeated_blocks_are_numbered_and_names_must_be_unique():
    s = parse("openai-compatibility:\n  - base-url: http://a\n  - base-url: http://b\n")
    assert [b.name for b in s.providers] == ["openai-compatibility", "openai-compatibility-2"]
    lines = problems(
        "openai-compatibility:\n  - {name: x, base-url: http://a}\n  - {name: x, base-url: http://b}\n"
    )
    assert "provider name 'x' is used twice" in lines[0]


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ("host: 127.0.0.1\n", False),
        ("host: 0.0.0.0\n", True),
        ("host: 0.0.0.0\napi-keys: [your-api-key-1]\n", True),
        ("host: 0.0.0.0\napi-keys: [a-real-looking-key]\n", False),
        ("host: ''\n", True),
    ],
)
def test_public_bind_needs_real_client_keys(text, refused):
    assert (config.bind_problem(parse(text)) is not None) is refused


def test_builtin_default_from_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    s = config.builtin_default(LOOKUP)
    assert s.host == "127.0.0.1" and s.port == 8317 and s.api_keys == ()
    (block,) = s.providers
    assert (block.name, block.driver, block.base_url) == (
        "openai",
        "openai-compatibility",
        "http://127.0.0.1:9/v1",
    )
    monkeypatch.delenv("OPENAI_API_KEY")
    assert config.builtin_default(LOOKUP).providers == ()


def test_config_search_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KEYRAIL_CONFIG", raising=False)
    assert config.default_path(None) is None
    (tmp_path / "config.yaml").write_text("port: 1\n")
    assert str(config.default_path(None)) == "config.yaml"
    monkeypatch.setenv("KEYRAIL_CONFIG", "other.yaml")
    assert str(config.default_path(None)) == "other.yaml"
    assert str(config.default_path("explicit.yaml")) == "explicit.yaml"


def test_example_config_is_valid():
    from pathlib import Path

    example = Path(__file__).parent.parent / "config" / "config.example.yaml"
    s = config.load(example, LOOKUP)
    assert s.providers
