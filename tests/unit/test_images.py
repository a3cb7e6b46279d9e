"""`fleetd images build`'s preparation of the source tree (fleetd.images): no Docker needed."""

from __future__ import annotations

from pathlib import Path

from fleetd.images import clean_build_tree


def test_modules_deleted_from_the_tree_do_not_reach_the_wheel(tmp_path: Path) -> None:
    """setuptools builds the wheel from build/lib, which kept fleetd/llmsim.py after it became a package: the image
    ran code the checkout no longer had (zone 2's code fingerprint differed from the daemon's)."""
    stale = tmp_path / "build" / "lib" / "fleetd" / "llmsim.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("old = True\n")
    (tmp_path / "build" / "bdist.linux-x86_64" / "wheel").mkdir(parents=True)
    wheels = tmp_path / "build" / "wheels"
    wheels.mkdir()
    (wheels / "httptools-0.7.1.whl").write_bytes(b"kept")
    clean_build_tree(tmp_path)
    assert not (tmp_path / "build" / "lib").exists() and not list((tmp_path / "build").glob("bdist.*"))
    assert (wheels / "httptools-0.7.1.whl").read_bytes() == b"kept"  # downloaded wheels stay
    clean_build_tree(tmp_path / "nothing-built-yet")
