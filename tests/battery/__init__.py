"""The fault battery: a fault-injecting upstream and a hostile client against keyrail.

Fast tier: part of `make test`. Long tier: `make test-long` (tests marked `long`).
"""
