"""The `cursor` driver package: Cursor's models (Claude, GPT, Composer, Grok as Cursor names
them) with a Cursor subscription. OPT-IN AND REVERSE-ENGINEERED: Cursor has no official
inference API for subscription models; every path here was learnt from community clients and
may break, or breach Cursor's terms, at any time.

    cursor:
      - api-key: crsr_...            # a user API key (cursor.com/dashboard → API); or a list
        # token-file: ~/.keyrail/cursor.json   # from `keyrail login cursor`; or a list
        # token-file: ~/.config/Cursor/User/globalStorage/state.vscdb   # the IDE's login
        # transport: auto            # h2 (Run over HTTP/2) | sse (RunSSE + BidiAppend) | auto
        # client-version: cli-2026.08.11-e8db854   # when Cursor says "outdated client"
        # silence-seconds: 90        # abort a turn that brings no frame (not even a heartbeat)
        # agent-url / base-url / refresh-url: other hosts (tests use fakes on 127.0.0.1)
      - cursor-api-url: http://127.0.0.1:3000     # sidecar mode: a local cursor-api
        auth-token: ...

What rests on a single secondary source (LIKELY) rather than working code, and what to do if
it stops working (docs/cursor.md has the full list):
- `RunSSE` + `BidiAppend` (the HTTP/1.1 transport) and their body shapes: if it fails, set
  `transport: h2` (the HTTP/2 `Run` stream is what the working community code used).
- the agent host from `GetServerConfig` and the fallback `https://agent.cursor.sh`: if turns
  fail to connect, set `agent-url` (e.g. `https://api2.cursor.sh`, where `Run` used to live).
- `GetServerConfig` field 7 forcing HTTP/1.1; with `transport: auto` the driver obeys it.
- `connect-accept-encoding: gzip`, `x-original-request-id`, `user-agent: connect-es/1.6.1`.
- the sidecar's API (cursor-api): treated as any OpenAI-compatible upstream.

CERTAIN facts of the notes not implemented (docs/cursor.md says why): checkpoint reuse (every
new turn is flattened; a parked turn continues on its own stream), and coalescing deltas for
16 ms (the community client's output habit, not a wire requirement). Implemented beyond the
basics: `interaction_query` ignored as the community client does, `exec_server_control_message`
abort withdrawing a pending tool call, the 90 s no-frame abort (`silence-seconds`), the IDE's
`state.vscdb` as a `token-file` (read-only; ide.py).

Modules: driver.py (the `Driver`), auth.py (key exchange, login refresh, PKCE login),
ide.py (the Cursor IDE's token from its `state.vscdb`, read-only),
transport.py (HTTP/2 and HTTP/1.1 channels), session.py (a turn and its server requests),
messages.py (agent.v1 messages), connect.py (envelopes, errors), wire.py (protobuf codec),
request.py (OpenAI request → turn), answer.py (turn → OpenAI answer).
"""

from drivers.cursor.driver import CursorDriver

__all__ = ["CursorDriver"]
