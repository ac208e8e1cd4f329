"""The redactor: configured secrets and credential-shaped text, masked; ordinary text kept."""

from __future__ import annotations

import pytest

from proxy import config
from proxy.redact import MASK, Redactor, secrets_of
from proxy.registry import Registry, options_lookup


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("Authorization: Bearer abc.def-123", "Authorization: [REDACTED]"),
        ('{"authorization": "Basic dXNlcjpwYXNz"}', '{"authorization": "[REDACTED]"}'),
        ("x-api-key=AIzaSyA1b2c3 next", "x-api-key=[REDACTED] next"),
        ("x-goog-api-key: k12345", "x-goog-api-key: [REDACTED]"),
        ('curl -H "bearer eyJhbGciOi.x.y"', 'curl -H "bearer [REDACTED]"'),
        ("key sk-proj-abcdefgh1234 leaked", "key [REDACTED] leaked"),
        ("GET /v1beta/models?key=AIzaXYZ&alt=sse", "GET /v1beta/models?key=[REDACTED]&alt=sse"),
        ("proxy http://user:hunter22@10.0.0.1:3128", "proxy http://user:[REDACTED]@10.0.0.1:3128"),
        # ordinary text, and our own help text, stay as they are
        ("send it as 'Authorization: Bearer <key>'.", "send it as 'Authorization: Bearer <key>'."),
        ("risk-assessment task-manager12345", "risk-assessment task-manager12345"),
        ("prompt_tokens=11 total_tokens=18", "prompt_tokens=11 total_tokens=18"),
        ("token file ~/.aws/sso/cache/kiro-auth-token.json", None),
    ],
)
def test_shapes(text: str, clean: str | None) -> None:
    assert Redactor().redact(text) == (text if clean is None else clean)


def test_exact_secrets_longest_first_and_bytes() -> None:
    r = Redactor()
    r.add(["abcd1234", "abcd1234efgh", "ab"])  # "ab" is too short to be treated as a secret
    assert r.redact("x abcd1234efgh y abcd1234 ab") == f"x {MASK} y {MASK} ab"
    assert r.redact_bytes(b'{"m": "abcd1234"}') == b'{"m": "[REDACTED]"}'
    clean = b"nothing here"
    assert r.redact_bytes(clean) is clean


def test_owned_secrets_stay_bounded() -> None:
    r = Redactor()
    r.add(["configured-key-1"])
    for generation in range(100):  # an OAuth token refreshed a hundred times
        r.add([f"access-token-{generation:03d}"], owner="token kiro/1")
    assert r.redact("access-token-099 access-token-098") == f"{MASK} {MASK}"  # one generation back
    assert r.redact("access-token-097") == "access-token-097"
    assert r.redact("configured-key-1") == MASK
    assert len(r._secrets) == 3


def test_secrets_of_config() -> None:
    registry = Registry.discover()
    settings = config.parse(
        """
api-keys: [client-key-1]
remote-management: {secret-key: mgmt-secret-1}
openai-compatibility:
  - name: one
    base-url: http://127.0.0.1:9/v1
    proxy-url: http://127.0.0.1:3128
    headers: {X-Api-Token: header-secret-1, X-Title: visible-title, Authorization: Bearer hdr-tok-1}
    api-key-entries: [{api-key: provider-key-1, proxy-url: http://127.0.0.1:3129}]
    models: [m]
""",
        options_lookup(registry),
    )
    found = set(secrets_of(settings))
    assert {"client-key-1", "mgmt-secret-1", "provider-key-1", "header-secret-1"} <= found
    assert {"Bearer hdr-tok-1", "hdr-tok-1"} <= found
    assert not {"visible-title", "http://127.0.0.1:3129", "http://127.0.0.1:9/v1"} & found


def test_many_secrets_with_shared_heads_are_all_found():
    from proxy.redact import Redactor

    # not credential-shaped (no `sk-`, no `key=`): only the registered values can find them
    many = [f"live_{i:04d}_abcdef" for i in range(200)] + ["prod_zzzz_last"]
    redactor = Redactor()
    redactor.add(many)
    for secret in (many[0], many[137], many[-1]):
        assert (
            redactor.redact(f"upstream said: bad key {secret}!")
            == "upstream said: bad key [REDACTED]!"
        )
    assert redactor.redact("bench-model") == "bench-model"
