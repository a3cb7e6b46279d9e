# The fleetd image: zone 2 (the gateway) runs from it.
# Build with `fleetd images build`, which puts the wheels of fleetd and its
# dependencies in build/wheels first (no index is reached inside the build).
# BASE defaults to the official Python image; on a machine with no registry,
# `fleetd images build` makes a Debian base from the host's apt sources.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
COPY build/wheels/ /tmp/wheels/
RUN python3 -m venv /opt/fleetd \
    && /opt/fleetd/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels fleetd \
    && rm -rf /tmp/wheels \
    && /opt/fleetd/bin/fleetd --version
ENV PATH=/opt/fleetd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# nobody: zone 2 needs no privilege at all.
USER 65534:65534
ENTRYPOINT ["fleetd"]
CMD ["--help"]
