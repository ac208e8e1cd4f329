"""The route table: each client path → the dialect it speaks.

Owns: which POST paths carry a chat dialect (and so get a `Bridge` and errors in that dialect),
and the codec of each dialect. Paths not listed (completions, embeddings, the management
API) are OpenAI-shaped and pass through without a dialect.
Does not own: registering the routes (http/handlers.py), the codecs themselves.
"""

from __future__ import annotations

from proxy.dialects import chat, messages, responses
from proxy.dialects.assembler import Codec

#: dialect name → its codec
CODECS: dict[str, Codec] = {c.name: c for c in (chat.CODEC, messages.CODEC, responses.CODEC)}

#: endpoint (the path below /v1) → dialect name
DIALECT_OF: dict[str, str] = {
    "chat/completions": "chat",
    "messages": "messages",
    "messages/count_tokens": "messages",
    "responses": "responses",
}

#: the full paths (with and without /v1) → dialect name, for error bodies and access lines
DIALECT_OF_PATH: dict[str, str] = {
    prefix + endpoint: dialect
    for endpoint, dialect in DIALECT_OF.items()
    for prefix in ("/v1/", "/")
}


def codec_for_path(path: str) -> Codec | None:
    """The codec of the dialect a path speaks; None for the OpenAI-shaped rest."""
    dialect = DIALECT_OF_PATH.get(path)
    return CODECS[dialect] if dialect is not None else None
