"""keyrail: an asyncio LLM API proxy. This module is the public API for driver authors.

Everything a driver plugin needs is importable from here; the set is pinned by a test, so
removing or renaming a name is a breaking change (bump `API_VERSION`).
"""

from proxy.config import ModelEntry, ProviderBlock
from proxy.driver import (
    API_VERSION,
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    NEUTRAL,
    RESPONSES,
    BytesStream,
    ByteStream,
    Call,
    Credential,
    Driver,
    Reply,
    ResponseStream,
    describe_failure,
    read_error_body,
)
from proxy.errors import (
    CredentialRejected,
    DriverError,
    ProviderDiscontinued,
    ProxyError,
    RateLimited,
    StreamInterrupted,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
    classify_upstream,
)
from proxy.quota import Quota
from proxy.retry_hints import retry_after_seconds
from proxy.sse import SSEParser, data_event, event_data

__version__ = "0.1.0"

__all__ = [
    "API_VERSION",
    "CHAT",
    "COMPLETIONS",
    "EMBEDDINGS",
    "NEUTRAL",
    "RESPONSES",
    "ByteStream",
    "BytesStream",
    "Call",
    "Credential",
    "CredentialRejected",
    "Driver",
    "DriverError",
    "ModelEntry",
    "ProviderBlock",
    "ProviderDiscontinued",
    "ProxyError",
    "Quota",
    "RateLimited",
    "Reply",
    "ResponseStream",
    "SSEParser",
    "StreamInterrupted",
    "UpstreamError",
    "UpstreamRejected",
    "UpstreamUnavailable",
    "__version__",
    "classify_upstream",
    "data_event",
    "describe_failure",
    "event_data",
    "read_error_body",
    "retry_after_seconds",
]
