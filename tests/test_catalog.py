"""Model resolution: prefixes, force-model-prefix, aliases, excluded globs, pools."""

from __future__ import annotations

import pytest

from proxy import catalog, config
from proxy.errors import UnknownModel
from proxy.registry import Registry, options_lookup

REGISTRY = Registry.discover()


def build(text: str, discovered=None) -> catalog.Catalog:
    s = config.parse(text, options_lookup(REGISTRY), source="config.yaml")
    creds = {b.name: REGISTRY.get(b.driver).credentials(b) for b in s.providers}
    return catalog.build(s, creds, discovered or {}, now=1000)


BLOCKS = """
openai-compatibility:
  - name: direct
    base-url: http://a
    api-key-entries: [{{api-key: k1}}, {{api-key: k2}}]
    models:
      - {{name: gpt-4o, alias: smart}}
      - {{name: gpt-4o-mini}}
      - {{name: o1-preview}}
    excluded-models: ["*-PREVIEW"]
  - name: agg
    prefix: agg
    base-url: http://b
    api-key-entries: [{{api-key: k3}}]
    models:
      - {{name: openai/gpt-4o, alias: smart}}
      - {{name: claude-3-haiku}}
force-model-prefix: {force}
"""


def test_prefix_alias_pool_and_exclusion():
    cat = build(BLOCKS.format(force="false"))
    ids = [m["id"] for m in cat.model_list()]
    assert ids == ["agg/claude-3-haiku", "agg/smart", "claude-3-haiku", "gpt-4o-mini", "smart"]
    smart = cat.resolve("smart")
    # a pool: both blocks, every credential, in declaration order
    assert [(t.provider, t.upstream_model) for t in smart.targets] == [
        ("direct", "gpt-4o"),
        ("direct", "gpt-4o"),
        ("agg", "openai/gpt-4o"),
    ]
    assert cat.collisions == {"smart": ("direct", "agg")}
    assert [t.provider for t in cat.resolve("agg/smart").targets] == ["agg"]
    assert [(e.provider, e.model) for e in cat.excluded] == [("direct", "o1-preview")]
    with pytest.raises(UnknownModel):
        cat.resolve("o1-preview")
    assert cat.resolve("SMART").model == "smart"  # case-insensitive fallback


def test_force_model_prefix_hides_bare_ids_of_prefixed_blocks():
    cat = build(BLOCKS.format(force="true"))
    ids = [m["id"] for m in cat.model_list()]
    assert ids == ["agg/claude-3-haiku", "agg/smart", "gpt-4o-mini", "smart"]
    assert [t.provider for t in cat.resolve("smart").targets] == ["direct", "direct"]


def test_models_list_shape_and_owner():
    cat = build(BLOCKS.format(force="false"))
    first = cat.model_list()[0]
    assert first == {
        "id": "agg/claude-3-haiku",
        "object": "model",
        "created": 1000,
        "owned_by": "agg",
    }


def test_discovered_models_and_disabled_blocks():
    text = """
openai-compatibility:
  - name: disc
    base-url: http://a
    excluded-models: ["*embedding*"]
  - name: off
    disabled: true
    base-url: http://b
    models: [{name: m}]
"""
    cat = build(text, {"disc": ["gpt-x", "text-embedding-3"]})
    assert [m["id"] for m in cat.model_list()] == ["gpt-x"]


@pytest.mark.parametrize(
    ("model", "patterns", "hit"),
    [
        ("gpt-5.1", ["gpt-5.1"], True),
        ("Gemini-2.5-Pro", ["gemini-2.5-*"], True),
        ("o1-preview", ["*-preview"], True),
        ("x-flash-y", ["*flash*"], True),
        ("a-b-c", ["a*c"], True),
        ("gpt-4o", ["gpt-4"], False),
        ("gpt.4o", ["gpt?4o"], False),
    ],
)
def test_excluded_globs(model, patterns, hit):
    assert (catalog.excluded_by(model, patterns) is not None) is hit
