"""The `kiro` driver package: Kiro / Amazon Q models with the Kiro IDE's login.

A block needs nothing but the IDE's token file (the default path is used when none is given):

    kiro:
      - token-file: ~/.aws/sso/cache/kiro-auth-token.json   # camelCase or snake_case fields
        # region: us-east-1          API region (default: the profile ARN's, else the token's
        #                            SSO region mapped: eu-* → eu-central-1, else us-east-1)
        # profile-arn: arn:aws:...   overrides the file's
        # access-token / refresh-token: inline tokens instead of a file (kept in memory)
        # base-url: one address for everything; base-urls: the host order (hosts.py);
        # management-url: profiles and usage; refresh-url: the token host
        # first-byte-seconds: 15     no first event by then: the next credential
        # agent-task-type: vibe      opt back in to the agent field the runtime host refuses

Without `models`, the block serves what `ListAvailableModels` lists plus the names of
models.py; `models`, `excluded-models` and `prefix` apply as for any block. Tokens are refreshed
ten minutes before expiry and after an invalid-token answer, and written back to the file.

Modules: driver.py (the `Driver`), hosts.py (the host table, regions, fallback), management.py
(profiles, model list, usage limits), auth.py (refresh flows), request.py (OpenAI → Kiro body),
response.py (Kiro events → OpenAI chunks), thinking.py (inline thinking → reasoning),
eventstream.py (the binary framing), models.py.
"""

from drivers.kiro.driver import KiroDriver

__all__ = ["KiroDriver"]
