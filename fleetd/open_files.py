"""Lifting a process's soft limit on open files, which the daemon and zone 2 both do at start."""

from __future__ import annotations

import resource

OPEN_FILES = 65536  # the unit's LimitNOFILE; zone 2's soft limit within its hard one


def raise_open_files(most: int = OPEN_FILES) -> int:
    """Lift the soft limit on open files to the hard one (at most ``most``), as Go's runtime does for dockerd; never
    lower it. The daemon: each idle worker of a deployment holds a long poll (a socket) through zone 2. Zone 2: Docker
    (25 and later) starts containers with a soft limit of 1024 under a hard one of 524288, which would leave its two
    listeners 512 descriptors between them. The new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = most if hard == resource.RLIM_INFINITY else min(hard, most)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        return wanted
    return soft
