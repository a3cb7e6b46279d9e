"""--disk: an agent's writable space is bounded by the kernel, on the real engine.

A hostile agent writes until something stops it: the root filesystem, /tmp, its checkpoint, its
home, the files Docker bind-mounts from the host (/etc/hosts). Each write here is capped by the
agent script itself at WRITE_CAP, so that on an engine (or a fleetd) without the limit the test
fails instead of filling the host.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.integration.harness import AGENT_IMAGE, Daemon, wait_for

DISK = 64 << 20
WRITE_CAP = 3 * DISK  # what the agent tries to write to each place
ROOT_AGENT_IMAGE = "fleetd-test/root-agent:latest"  # the agent image, run as root (built by the test)

# Writes until the kernel says no (or WRITE_CAP), everywhere it can think of; prints what happened as JSON.
# The first run also saves a checkpoint and exits 3, so that its restart policy starts it again.
WRITER = r"""
import errno, json, os, sys, fleetd_agent
CAP = int(sys.argv[1])

def fill(path):
    written, error = 0, None
    chunk = b"\1" * (1 << 20)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            while written < CAP:
                written += os.write(fd, chunk)
        finally:
            os.close(fd)
    except OSError as exc:
        error = errno.errorcode.get(exc.errno, str(exc.errno))
    return {"bytes": written, "error": error}

state = fleetd_agent.load_checkpoint(default=None)
if state is not None:
    print("RESUMED " + json.dumps(state), flush=True)
    sys.exit(0)
places = {"root": "/fill", "tmp": "/tmp/fill", "checkpoint": "/fleetd/checkpoint/fill",
          "home": os.path.expanduser("~/fill"), "var_tmp": "/var/tmp/fill", "etc_hosts": "/etc/hosts"}
report = {name: fill(path) for name, path in places.items()}
print("REPORT " + json.dumps(report), flush=True)
if os.path.exists("/fleetd/checkpoint/fill"):
    os.remove("/fleetd/checkpoint/fill")
fleetd_agent.save_checkpoint({"run": 1})
sys.exit(3)
"""


@pytest.fixture
def root_image(engine: docker.DockerClient) -> Iterator[str]:
    """The agent image with ``USER root``: root, but with every capability dropped, as fleetd runs it."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        dockerfile = f"FROM {AGENT_IMAGE}\nUSER root\n".encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    context.seek(0)
    engine.images.build(fileobj=context, custom_context=True, tag=ROOT_AGENT_IMAGE, rm=True, forcerm=True,
                        pull=False)
    try:
        yield ROOT_AGENT_IMAGE
    finally:
        with contextlib.suppress(docker.errors.APIError):
            engine.images.remove(ROOT_AGENT_IMAGE)


def report_of(daemon: Daemon, agent_id: str) -> dict[str, dict[str, object]]:
    logs = wait_for(lambda: (text := daemon.logs(agent_id)) and "REPORT " in text and text, 120,
                    what=f"the writer's report; daemon log:\n{daemon.log()[-3000:]}")
    line = next(x for x in logs.splitlines() if x.startswith("REPORT "))
    result: dict[str, dict[str, object]] = json.loads(line.removeprefix("REPORT "))
    return result


def allocated(path: Path) -> int:
    """Bytes of the host's disk a file really uses (disk images are sparse)."""
    return os.stat(path).st_blocks * 512


def check_bounded(report: dict[str, dict[str, object]], writable: tuple[str, ...] = ("tmp", "checkpoint")) -> None:
    """Each place the agent may write (half of --disk each) ends in ENOSPC; the others refuse the first byte."""
    for place in set(report) - set(writable):
        assert report[place]["bytes"] == 0, (place, report)
        assert report[place]["error"] in ("EROFS", "EACCES"), (place, report)
    for place in writable:
        assert report[place]["error"] == "ENOSPC", (place, report)
        assert 0.6 * DISK / 2 < int(str(report[place]["bytes"])) <= DISK / 2, report  # most of its share, no more


def test_writes_stop_at_the_disk_limit_everywhere_and_the_checkpoint_survives_a_restart(
        daemon: Daemon, engine: docker.DockerClient) -> None:
    agent_id = daemon.spawn("--disk", "64m", "--memory", "64m", "--restart", "on-failure:1",
                            AGENT_IMAGE, "python3", "-c", WRITER, str(WRITE_CAP))
    report = report_of(daemon, agent_id)
    check_bounded(report)

    # The agent's writable layer on the host's disk stayed empty, its disk images hold at most --disk.
    container_id = daemon.agent(agent_id)["container_id"]
    (listed,) = engine.api.containers(all=True, size=True, filters={"id": container_id})
    assert listed.get("SizeRw", 0) < 1 << 20
    images = sorted((daemon.state_dir / "disks").glob(f"{agent_id}-*.img"))
    assert len(images) == 2 and sum(allocated(p) for p in images) <= DISK

    # Filling the disk was ENOSPC, not an OOM kill, although the page cache it went through is charged to 64m.
    record = wait_for(lambda: (a := daemon.agent(agent_id))["restarts"] == 1 and a["state"] == "exited" and a, 90,
                      what="the restart and its clean exit")
    assert record["exit_code"] == 0 and not record["oom_killed"]
    assert not [e for e in daemon.events(agent_id) if e["type"] in ("oom", "oom_killed")]
    resumed = [x for x in daemon.logs(agent_id).splitlines() if x.startswith("RESUMED ")]
    assert resumed and json.loads(resumed[0].removeprefix("RESUMED "))["run"] == 1  # the checkpoint survived

    status = daemon.api.call("GET", "/v1/status")  # the daemon and zone 2 did not notice
    assert status["zone2"]["healthy"] is True and status["docker"]["connected"] is True


def test_a_root_agent_is_bounded_too(root_image: str, daemon: Daemon) -> None:
    # root_image first: its teardown (removing the image) runs after the daemon's has removed the containers.
    agent_id = daemon.spawn("--disk", "64m", root_image, "python3", "-c", WRITER, str(WRITE_CAP))
    report = report_of(daemon, agent_id)
    # Root owns /etc/hosts (a file on the host's disk) but not the agent user's checkpoint directory.
    assert report["etc_hosts"]["error"] == "EROFS" and report["checkpoint"]["error"] == "EACCES"
    check_bounded(report, writable=("tmp",))


def test_the_disks_go_with_the_agent(daemon: Daemon, engine: docker.DockerClient) -> None:
    agent_id = daemon.spawn("--disk", "32m", AGENT_IMAGE, "sleep", "60")
    disks = daemon.state_dir / "disks"
    assert len(list(disks.glob(f"{agent_id}-*.img"))) == 2
    daemon.cli("kill", agent_id)
    daemon.cli("teardown")
    assert not list(disks.glob(f"{agent_id}-*"))
    assert not [v for v in engine.volumes.list(filters={"label": f"fleetd.instance={daemon.instance}"})]


def test_removing_a_disk_never_detaches_a_device_another_disk_now_holds(tmp_path: Path) -> None:
    """Agent A's removal lists A's loop device, the device is freed (A's volume unmounted) and a spawn gives it to
    agent B, then A's removal detaches it by name: B's mount failed with EIO (1.5% of spawns under churn in
    bench/soak.py). The detach now checks, holding the device, that it still backs A's image."""
    from fleetd.disks import Disks, detach

    disks = Disks(tmp_path / "disks")
    try:
        a = disks.create("agenta", "tmp", 16 << 20)
        loop_a = os.readlink(a)
        b = disks.create("agentb", "tmp", 16 << 20)
        loop_b = os.readlink(b)
        # A's removal, racing: it holds B's device name (as if A's had been freed and given to B)
        assert not detach(loop_b, disks.image("agenta", "tmp"))
        assert Path(f"/sys/block/{Path(loop_b).name}/loop/backing_file").read_text().strip() == str(
            disks.image("agentb", "tmp"))
        assert detach(loop_a, disks.image("agenta", "tmp"))  # its own: detached
        backing = Path(f"/sys/block/{Path(loop_a).name}/loop/backing_file")
        assert not backing.exists() or backing.read_text().strip() != str(disks.image("agenta", "tmp"))
    finally:
        disks.remove_all()
