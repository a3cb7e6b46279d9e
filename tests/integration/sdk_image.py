"""A test agent image with the official ``openai`` and ``anthropic`` SDKs, built offline from wheels.

The wheels are downloaded once on the host (through pip's configured index) into
``build/sdk-wheels`` and copied into the image, which installs them with
``--no-index``: the build itself never reaches a registry and never pulls. The
image is labelled with a digest of its wheels and the id of its base image and is
reused while both still match.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import docker
import pytest
from docker.models.images import Image

from tests.integration.harness import AGENT_IMAGE

SDK_IMAGE = "fleetd-test/sdk-agent:latest"
PACKAGES = ("openai", "anthropic")
REPO = Path(__file__).resolve().parents[2]
WHEELS = REPO / "build" / "sdk-wheels"
MANIFEST = "manifest.json"  # written last: its presence means the download finished
LABEL_WHEELS = "fleetd-test.sdk-wheels"
LABEL_BASE = "fleetd-test.base-image"
# Wheels for the agent image's interpreter (Debian bookworm: CPython 3.11, glibc 2.36), whatever the host runs.
PIP_TARGET = (
    "--only-binary=:all:",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--platform",
    "manylinux2014_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
    "--platform",
    "manylinux_2_28_x86_64",
)
DOCKERFILE = f"""\
FROM {AGENT_IMAGE}
COPY --chown=agent:agent wheels /tmp/wheels
RUN python3 -m venv /home/agent/venv \\
 && /home/agent/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-index \\
    --find-links /tmp/wheels {" ".join(PACKAGES)} \\
 && rm -rf /tmp/wheels
ENV PATH=/home/agent/venv/bin:$PATH
"""


def wheels_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for wheel in sorted(directory.glob("*.whl")):
        digest.update(wheel.name.encode() + b"\0" + hashlib.sha256(wheel.read_bytes()).digest())
    return digest.hexdigest()


def download_wheels() -> Path:
    """``build/sdk-wheels`` with the SDKs' wheels and their dependencies; downloaded only when missing."""
    wanted = {"packages": list(PACKAGES), "pip": list(PIP_TARGET)}
    manifest = WHEELS / MANIFEST
    if manifest.exists() and json.loads(manifest.read_text()).get("request") == wanted:
        return WHEELS
    WHEELS.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="sdk-wheels-", dir=WHEELS.parent))
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--disable-pip-version-check",
                "--dest",
                str(staging),
                *PIP_TARGET,
                *PACKAGES,
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            pytest.fail(f"pip download of {PACKAGES} failed:\n{result.stdout}\n{result.stderr}")
        wheels = sorted(p.name for p in staging.glob("*.whl"))
        (staging / MANIFEST).write_text(json.dumps({"request": wanted, "wheels": wheels}, indent=1))
        shutil.rmtree(WHEELS, ignore_errors=True)
        staging.rename(WHEELS)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return WHEELS


def existing(engine: docker.DockerClient, tag: str) -> Image | None:
    try:
        return engine.images.get(tag)
    except docker.errors.ImageNotFound:
        return None


def build_sdk_image(engine: docker.DockerClient) -> tuple[Image, bool]:
    """The SDK image (built only when missing or stale) and whether this call built it."""
    wheels = download_wheels()
    labels = {LABEL_WHEELS: wheels_digest(wheels), LABEL_BASE: engine.images.get(AGENT_IMAGE).id}
    old = existing(engine, SDK_IMAGE)
    if old is not None and all(old.labels.get(k) == v for k, v in labels.items()):
        return old, False
    with tempfile.TemporaryDirectory(prefix="sdk-image-") as context:
        shutil.copytree(wheels, Path(context) / "wheels", ignore=shutil.ignore_patterns(MANIFEST))
        (Path(context) / "Dockerfile").write_text(DOCKERFILE)
        try:
            # forcerm: intermediate containers go away even when a step fails.
            image, _ = engine.images.build(
                path=context, tag=SDK_IMAGE, labels=labels, rm=True, forcerm=True, pull=False
            )
        except docker.errors.BuildError as exc:
            output = "".join(str(chunk.get("stream") or chunk.get("error") or "") for chunk in exc.build_log)
            pytest.fail(f"building {SDK_IMAGE} failed: {exc}\n{output}")
    if old is not None and old.id and old.id != image.id:
        # The stale build we made before, now untagged: ours to remove (unless something still uses it).
        with contextlib.suppress(docker.errors.APIError):
            engine.images.remove(old.id, noprune=False)
    return image, True
