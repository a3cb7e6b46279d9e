"""A fingerprint of the fleetd code that runs: the daemon and zone 2 compare theirs.

Zone 2 runs from an image built by ``fleetd images build`` from the code of that moment, under the version tag
(``fleetd/zone2:0.1.0``) that later code keeps. A daemon whose code has moved on since (an upgrade in place without
a rebuild) would drive a zone 2 that does not know its price fields or rules. The fingerprint is a hash of the
package's source files, the same in a checkout, a wheel and the image.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

SOURCE_SUFFIXES = (".py", ".toml")  # the code and its data (the price table): what a wheel of fleetd holds


@cache
def code_fingerprint(package: Path | None = None) -> str:
    """sha256 (first 16 hex digits) over the package's .py and .toml files: their paths and contents."""
    root = package or Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in SOURCE_SUFFIXES and "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
