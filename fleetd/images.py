"""``fleetd images build``: the zone 2 image and the Python agent base image.

No registry is needed. When the base image is not on the engine, a Debian base
is made from the host's own apt sources with mmdebstrap and ``docker import``-ed.
Python dependencies enter the image as wheels prepared here on the host.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors

from fleetd import __version__
from fleetd.errors import InvalidRequest, RuntimeFailure
from fleetd.runtime import docker_errors

DEFAULT_BASE = "python:3.11-slim-bookworm"
FALLBACK_BASE = "fleetd/base"
ZONE2_IMAGE = "fleetd/zone2"
AGENT_IMAGE = "fleetd/agent-python"
BASE_PACKAGES = "python3,python3-venv,ca-certificates,curl"
HOST_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))


def source_root() -> Path:
    """The checkout fleetd runs from: its Dockerfile and images/ are needed to build."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "Dockerfile").exists() or not (root / "images").is_dir():
        raise InvalidRequest(f"images are built from a source checkout of fleetd; none found at {root}")
    return root


def image_present(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def host_suite() -> str:
    """The host's Debian suite (bookworm), from os-release."""
    text = Path("/etc/os-release").read_text()
    match = re.search(r"^VERSION_CODENAME=(\w+)", text, re.MULTILINE)
    if not match:
        raise InvalidRequest("cannot tell this host's Debian suite; pass --base with a local image")
    return match.group(1)


def make_base(client: docker.DockerClient) -> Iterator[str]:
    """Build a Debian base from the host's apt sources and import it as FALLBACK_BASE."""
    if shutil.which("mmdebstrap") is None:
        raise InvalidRequest(
            "the base image is not present locally and mmdebstrap is missing: "
            "apt-get install mmdebstrap, or docker load a base image and pass --base"
        )
    sources = next((p for p in HOST_SOURCES if p.exists() and p.stat().st_size), None)
    if sources is None:
        raise InvalidRequest("no apt sources on this host to build a base image from")
    suite = host_suite()
    tag = f"{FALLBACK_BASE}:{suite}"
    yield f"base image not present: building {tag} from {sources} with mmdebstrap"
    with tempfile.TemporaryDirectory(prefix="fleetd-base-") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        command = [
            "mmdebstrap", "--variant=minbase", f"--include={BASE_PACKAGES}",
            "--aptopt=Acquire::Check-Valid-Until \"false\"", suite, str(tarball), str(sources),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-5:])
            raise RuntimeFailure(f"mmdebstrap failed:\n{tail}")
        changes = [
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            'CMD ["python3"]',
        ]
        with docker_errors():
            client.api.import_image_from_file(str(tarball), repository=FALLBACK_BASE, tag=suite, changes=changes)
    yield f"imported {tag}"


def resolve_base(client: docker.DockerClient, base: str | None, chosen: list[str]) -> Iterator[str]:
    """Yield progress; append the base image to use to ``chosen``."""
    wanted = base or DEFAULT_BASE
    if image_present(client, wanted):
        chosen.append(wanted)
        return
    if base is not None:
        raise InvalidRequest(f"base image {base!r} not found locally: pull or load it first")
    fallback = f"{FALLBACK_BASE}:{host_suite()}"
    if not image_present(client, fallback):
        yield from make_base(client)
    chosen.append(fallback)


def runtime_requirements(root: Path | None = None) -> list[str]:
    """fleetd's own dependencies (no extras): from the tree being built, else as installed."""
    pyproject = (root or source_root()) / "pyproject.toml"
    if pyproject.exists():
        requirements = list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])
    else:
        requirements = importlib.metadata.requires("fleetd") or []
    return [r.split(";")[0].strip() for r in requirements if "extra ==" not in r]


def clean_build_tree(root: Path) -> None:
    """Remove setuptools' build/lib and build/bdist.*: a wheel built in the tree copies what they hold, modules
    deleted from the source since included (the image would run code the checkout no longer has)."""
    build = root / "build"
    for stale in [build / "lib", *build.glob("bdist.*")]:
        if stale.is_dir():
            shutil.rmtree(stale)


def prepare_wheels(root: Path) -> Iterator[str]:
    """Wheels of fleetd and its dependencies in build/wheels, for CPython 3.11 on Linux."""
    wheels = root / "build" / "wheels"
    if wheels.exists():
        for old in wheels.glob("fleetd-*.whl"):
            old.unlink()
    clean_build_tree(root)
    wheels.mkdir(parents=True, exist_ok=True)
    yield f"preparing wheels in {wheels}"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    arch = platform.machine()
    platforms = [f"manylinux{v}_{arch}" for v in ("2014", "_2_17", "_2_28", "_2_34")]
    steps = [
        [*pip, "wheel", "--no-deps", "--wheel-dir", str(wheels), str(root)],
        [*pip, "download", "--dest", str(wheels), "--only-binary=:all:", "--python-version", "3.11",
         "--implementation", "cp", *[f"--platform={p}" for p in platforms], *runtime_requirements(root)],
    ]
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeFailure(f"preparing wheels failed: {result.stderr.strip()[-800:]}")


def docker_build(client: docker.DockerClient, context: Path, dockerfile: str, image: str, base: str) -> Iterator[str]:
    yield f"building {image}:{__version__}"
    with docker_errors():
        stream = client.api.build(
            path=str(context), dockerfile=dockerfile, tag=f"{image}:{__version__}",
            buildargs={"BASE": base}, rm=True, forcerm=True, pull=False, decode=True,
        )
        log: list[str] = []
        for chunk in stream:
            if "error" in chunk:
                raise RuntimeFailure(f"building {image} failed: {chunk['error'].strip()}\n" + "".join(log[-10:]))
            log.append(chunk.get("stream", ""))
        client.api.tag(f"{image}:{__version__}", image, "latest")
    yield f"built {image}:{__version__} (also {image}:latest)"


def build_images(base: str | None = None) -> Iterator[str]:
    """Build fleetd/zone2 and fleetd/agent-python; yield progress lines."""
    root = source_root()
    with docker_errors():
        client = docker.from_env()
        client.ping()
    try:
        chosen: list[str] = []
        yield from resolve_base(client, base, chosen)
        base_image = chosen[0]
        yield f"base image: {base_image}"
        yield from prepare_wheels(root)
        yield from docker_build(client, root, "Dockerfile", ZONE2_IMAGE, base_image)
        # The agent image's context is the SDK it installs; its Dockerfile stays with the other images.
        agent_dockerfile = str(root / "images" / "agent-python" / "Dockerfile")
        yield from docker_build(client, root / "sdk" / "python", agent_dockerfile, AGENT_IMAGE, base_image)
    finally:
        client.close()
