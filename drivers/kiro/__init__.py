"""The `kiro` driver package: Kiro / Amazon Q through the Kiro IDE's login.

Modules: driver.py (the `Driver`), auth.py (refresh flows), request.py (OpenAI → Kiro body),
response.py (Kiro events → OpenAI chunks), eventstream.py (the binary framing), models.py.
"""

from drivers.kiro.driver import KiroDriver

__all__ = ["KiroDriver"]
