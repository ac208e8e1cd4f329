"""`api-keys` mappings (scoped, limited clients) and `routing` session affinity in config."""

from __future__ import annotations

from proxy import config
from tests.test_config import parse, problems


def test_strings_and_mappings_mix(monkeypatch):
    monkeypatch.setenv("TEAM_KEY", "team-key-from-the-environment")
    s = parse(
        """
api-keys:
  - plain-key-0123456789abcdef
  - key: ${TEAM_KEY}
    name: team-a
    models: ["fb/*", kiro-claude-*]
    rpm: 60
    tpm: "100000"
    max-concurrent: 4
    daily-tokens: 5000000
  - key: unnamed-key-0123456789abcdef
"""
    )
    assert s.api_keys == (
        "plain-key-0123456789abcdef",
        "team-key-from-the-environment",
        "unnamed-key-0123456789abcdef",
    )
    team, unnamed = s.clients
    assert team == config.ClientSpec(
        key="team-key-from-the-environment",
        name="team-a",
        models=("fb/*", "kiro-claude-*"),
        rpm=60,
        tpm=100000,
        max_concurrent=4,
        daily_tokens=5000000,
    )
    assert unnamed.name.startswith("client-") and "unnamed" not in unnamed.name
    assert s.warnings == ()


def test_mistakes_point_at_file_line_col_with_a_hint():
    found = problems(
        """
api-keys:
  - key: first-key-0123456789abcdef
    name: a
    rpmm: 5
  - {key: first-key-0123456789abcdef, name: b}
  - {name: c}
  - {key: other-key-0123456789abcdef, name: a, tpm: 0, models: [1]}
  - 7
"""
    )
    assert found == [
        "config.yaml:5:5: unknown key 'rpmm' in an 'api-keys' item (did you mean 'rpm'?)",
        "config.yaml:6:5: this key is the same as 'api-keys' item 1",
        "config.yaml:7:5: an 'api-keys' mapping needs 'key' (the client's key)",
        "config.yaml:8:48: 'tpm' must be at least 1 (leave it out for no limit)",
        "config.yaml:8:56: 'models' must be a list of model ids or '*' globs",
        "config.yaml:8:39: client name 'a' is used twice",
        "config.yaml:9:5: each 'api-keys' item must be a key or a mapping with 'key'",
    ]


def test_short_keys_and_plain_copies_are_warnings():
    s = parse("api-keys: [short, plain-key-0123456789abcdef, plain-key-0123456789abcdef]\n")
    assert s.api_keys == ("short", "plain-key-0123456789abcdef")
    assert s.warnings == (
        "config.yaml:1:12: client key shorter than 16 characters: easy to guess",
        "config.yaml:1:47: this key is the same as 'api-keys' item 2 (the copy is ignored)",
    )


def test_session_affinity_settings():
    s = parse("")
    assert not s.session_affinity and s.session_ttl_seconds == 3600
    assert s.session_sources == config.DEFAULT_SESSION_SOURCES
    s = parse(
        """
routing:
  session-affinity: true
  session-ttl-seconds: 600
  session-sources: [header:X-Conversation, body:metadata.conversation]
"""
    )
    assert s.session_affinity and s.session_ttl_seconds == 600
    assert s.session_sources == ("header:x-conversation", "body:metadata.conversation")
    # CLIProxyAPI's spelling of the TTL is a duration
    assert parse("routing: {session-affinity-ttl: 1h30m}\n").session_ttl_seconds == 5400
    assert problems("routing: {session-affinity-ttl: soon, session-sources: [cookie:x]}\n") == [
        "config.yaml:1:11: 'routing.session-affinity-ttl' must be a duration like 1h, 30m or 90s",
        "config.yaml:1:57: session source 'cookie:x' must be 'header:NAME' or 'body:field.path'",
    ]
    assert problems("routing: {session-afinity: true}\n") == [
        "config.yaml:1:11: unknown key 'routing.session-afinity' (did you mean 'session-affinity'?)"
    ]
