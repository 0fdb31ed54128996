"""Suite-wide settings. Hypothesis's 200 ms deadline per example fails on busy shared cores
(a 0.4 s example under load in CI), and speed is measured in benchmarks, not tests."""

from hypothesis import settings

settings.register_profile("ridgeline", deadline=None)
settings.load_profile("ridgeline")
