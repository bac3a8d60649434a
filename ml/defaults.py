"""Names and defaults shared by the library and the command line, importable without numpy (the
CLI builds its options from them at every start, also for `status`)."""

from __future__ import annotations

UNCERTAIN_POLICIES = ("exclude", "positive", "negative")  # what a -1 (uncertain) label becomes
BLANK_POLICIES = ("negative", "exclude")  # what a blank label becomes
DEFAULT_RESAMPLES = 1000  # bootstrap resamples for confidence intervals
