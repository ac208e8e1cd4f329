"""Property-based tests (hypothesis) of the parsers that read what others wrote: Kiro's AWS
event-stream decoder, config loading, and model resolution. Each either gives the right answer
or refuses with its own error, for any input and any way the bytes are cut.
(The SSE parser's properties are in test_sse.py.)"""

from __future__ import annotations

import contextlib
import json
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.kiro import eventstream
from drivers.kiro.eventstream import Decoder, FrameError
from proxy import catalog, config
from proxy.errors import ConfigError, UnknownModel
from proxy.registry import Registry, options_lookup

REGISTRY = Registry.discover()
LOOKUP = options_lookup(REGISTRY)

_header_value = st.one_of(
    st.booleans(),
    st.integers(-(2**31), 2**31 - 1),
    st.binary(max_size=20),
    st.text(max_size=20),
    st.uuids().map(lambda u: uuid.UUID(str(u))),
)
_frame = st.builds(
    lambda headers, payload: (headers, payload),
    st.dictionaries(st.text(min_size=1, max_size=12), _header_value, max_size=4),
    st.binary(max_size=200),
)


def _decode(data: bytes, cuts: list[int]) -> list[eventstream.Message]:
    decoder = Decoder()
    bounds = sorted({c for c in cuts if 0 < c < len(data)})
    out = []
    for a, b in zip([0, *bounds], [*bounds, len(data)], strict=True):
        out.extend(decoder.feed(data[a:b]))
    decoder.end()
    return out


@settings(max_examples=200, deadline=None)
@given(frames=st.lists(_frame, max_size=5), cuts=st.lists(st.integers(0, 2000), max_size=20))
def test_event_stream_frames_decode_the_same_however_cut(frames, cuts):
    wire = b"".join(eventstream.encode(h, p) for h, p in frames)
    whole = _decode(wire, [])
    assert [m.payload for m in whole] == [p for _, p in frames]
    assert [(m.payload, m.headers) for m in _decode(wire, cuts)] == [
        (m.payload, m.headers) for m in whole
    ]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=10))
def test_event_stream_garbage_is_a_frame_error_or_nothing(data, cuts):
    with contextlib.suppress(FrameError):  # the one refusal: the driver ends the stream
        _decode(data, cuts)


@settings(max_examples=200, deadline=None)
@given(frame=_frame, flip=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_event_stream_a_flipped_bit_never_passes_silently(frame, flip, bit):
    wire = bytearray(eventstream.encode(*frame))
    wire[flip % len(wire)] ^= 1 << bit
    try:
        messages = _decode(bytes(wire), [])
    except FrameError:
        return
    assert messages == [], "a corrupted frame decoded"  # both CRCs must catch a flipped bit


_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 70000), st.floats(allow_nan=False),
    st.text(max_size=12),
)  # fmt: skip
_keys = st.sampled_from([
    "host", "port", "api-keys", "request-retry", "max-retry-interval", "routing",
    "strategy", "streaming", "keepalive-seconds", "limits", "request-body-mb", "sse-event-mb",
    "timeouts", "idle-seconds", "openai-compatibility", "name", "base-url", "models", "alias",
    "api-key-entries", "api-key", "prefix", "priority", "excluded-models", "headers",
    "remote-management", "secret-key", "allow-remote", "fallbacks", "unknown-key",
])  # fmt: skip
_yaml_value = st.recursive(
    _scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_keys, inner, max_size=4)),
    max_leaves=12,
)


def _to_yaml(value: object) -> str:
    return json.dumps(value)  # JSON is YAML: every shape, any nesting, quoted as needed


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.dictionaries(_keys, _yaml_value, max_size=6))
def test_config_loading_gives_settings_or_a_config_error(doc):
    text = _to_yaml(doc)
    try:
        settings_ = config.parse(text, LOOKUP, source="config.yaml")
    except ConfigError as exc:
        assert exc.problems and all(p.startswith("config.yaml:") for p in exc.problems)
        return
    assert isinstance(settings_.port, int)


@settings(max_examples=50, deadline=None)
@given(text=st.text(max_size=200))
def test_config_loading_of_any_text_gives_settings_or_a_config_error(text):
    with contextlib.suppress(ConfigError):
        config.parse(text, LOOKUP, source="config.yaml")


CATALOG_CONFIG = """
openai-compatibility:
  - name: a
    base-url: http://127.0.0.1:9/v1
    prefix: team
    models: [{name: gpt-4o-mini, alias: fast}, {name: Big-Model}]
  - name: b
    base-url: http://127.0.0.1:9/v1
    models: [{name: gpt-4o-mini}]
"""


@settings(max_examples=300, deadline=None)
@given(model=st.one_of(
    st.text(max_size=40),
    st.sampled_from(["fast", "FAST", "team/fast", "gpt-4o-mini", "big-model", "team/Big-Model",
                     "team/", "/", "a/gpt-4o-mini"]),
))  # fmt: skip
def test_model_resolution_gives_a_route_or_unknown_model(model):
    s = config.parse(CATALOG_CONFIG, LOOKUP, source="config.yaml")
    creds = {b.name: REGISTRY.get(b.driver).credentials(b) for b in s.providers}
    cat = catalog.build(s, creds, {}, now=1000)
    try:
        route = cat.resolve(model)
    except UnknownModel:
        assert model not in cat.routes
        return
    assert route.targets
    assert route.model in cat.routes
    assert cat.resolve(route.model) is route  # resolving is idempotent
