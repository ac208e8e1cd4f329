"""The `kiro` driver package: Kiro / Amazon Q models with the Kiro IDE's login.

A block needs nothing but the IDE's token file (the default path is used when none is given):

    kiro:
      - token-file: ~/.aws/sso/cache/kiro-auth-token.json   # camelCase or snake_case fields
        # region: us-east-1          API region (default: from the profile ARN, else us-east-1)
        # profile-arn: arn:aws:...   overrides the file's (sent for social logins only)
        # access-token / refresh-token: inline tokens instead of a file (kept in memory)
        # base-url / refresh-url: other API / token hosts (tests use fakes on 127.0.0.1)

Without `models`, the block serves `kiro-auto`, `kiro-claude-sonnet-4-5` and the other names of
models.py; `models`, `excluded-models` and `prefix` apply as for any block. Tokens are refreshed
ten minutes before expiry and after an invalid-token answer, and written back to the file.

Modules: driver.py (the `Driver`), auth.py (refresh flows), request.py (OpenAI → Kiro body),
response.py (Kiro events → OpenAI chunks), eventstream.py (the binary framing), models.py.
"""

from drivers.kiro.driver import KiroDriver

__all__ = ["KiroDriver"]
