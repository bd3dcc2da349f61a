"""Hypothesis profiles of the initializer fuzz (tests/schemes/test_fuzz.py).

``default``: what ``make test`` runs. Derandomized (the same examples on every run and
machine), no example database, no deadline; about 11,000 generated calls in all,
spread evenly over the targets (the fuzz asserts at least 10,000).

``large``: what ``make fuzz`` runs (``TORCHINIT_FUZZ=large``). Random (new examples on
every run), 20 times the calls of ``default``.

Contract violations are collected and asserted at the end of each target's test, so
Hypothesis never sees a failing example: every example of the budget runs, and the
report keeps the simplest reproduction of each failure class instead of a shrunk one.
"""

from __future__ import annotations

import math
import os

from hypothesis import HealthCheck, settings

#: Generated calls per profile, all targets together.
TOTAL_CALLS = {"default": 11_000, "large": 220_000}
#: The least the default profile must reach (asserted by the fuzz's last test).
MIN_DEFAULT_CALLS = 10_000

PROFILE = os.environ.get("TORCHINIT_FUZZ", "default").strip().lower() or "default"
if PROFILE not in TOTAL_CALLS:
    raise ValueError(f"TORCHINIT_FUZZ must be one of {', '.join(TOTAL_CALLS)}; got {PROFILE!r}")


def fuzz_settings(n_targets: int) -> settings:
    """The settings of one target's test: its share of the profile's calls."""
    return settings(
        max_examples=math.ceil(TOTAL_CALLS[PROFILE] / n_targets),
        derandomize=PROFILE == "default",
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
