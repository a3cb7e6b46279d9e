"""The daemon lifts its soft limit on open files (idle workers each hold a long poll through zone 2)."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import resource
from fleetd.open_files import raise_open_files
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
got = raise_open_files(4096)
print(got, resource.getrlimit(resource.RLIMIT_NOFILE)[0], min(hard, 4096) if hard != resource.RLIM_INFINITY else 4096)
resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))
print(raise_open_files(4096), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def test_the_soft_limit_is_raised_to_the_hard_one_within_a_bound() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True).stdout.split()
    got, soft, expected, capped, capped_soft = (int(x) for x in out)
    assert got == soft == expected  # raised from 256
    assert capped == capped_soft == 300  # never above the hard limit
