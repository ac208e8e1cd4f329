"""The `minimax` driver (see driver.py); its parts: request.py, chunks.py, think.py, codes.py,
quota.py."""

from drivers.minimax.driver import MinimaxDriver

__all__ = ["MinimaxDriver"]
