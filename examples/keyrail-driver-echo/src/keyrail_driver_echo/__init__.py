"""keyrail-driver-echo: a keyrail driver for the Echo API (an invented, non-OpenAI protocol).

Owns nothing itself: the driver is in driver.py, the answer translation in stream.py.
"""

from keyrail_driver_echo.driver import EchoDriver

__all__ = ["EchoDriver"]
