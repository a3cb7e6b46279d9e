"""The errors fleetd raises, and the HTTP status each one maps to.

FleetdError                  base; carries an HTTP status and a machine code
├── InvalidRequest (400)     bad input: a flag, a JSON body, a spec value
│   └── ImageNotFound (400)  the image is not present on the engine
├── NotFound (404)           no such agent (or route)
├── Conflict (409)           duplicate name, agent not in a state for that verb
├── WaitTimeout (408)        a wait with a timeout ended first (fleetd task wait)
├── RuntimeUnavailable (503) the Docker engine does not answer
├── Unavailable (503)        zone 2 does not answer (budgets are counted there)
└── RuntimeFailure (502)     the Docker engine answered with an error

Docker's own exceptions are translated once, in ``runtime.docker_errors``.
"""

from __future__ import annotations


class FleetdError(Exception):
    """Base of every error fleetd reports to a user."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, object]:
        """The error body, in the OpenAI error shape zone 2 uses too."""
        return {"error": {"type": self.code, "code": self.code, "message": self.message}}


class InvalidRequest(FleetdError):
    status = 400
    code = "invalid_request"


class ImageNotFound(InvalidRequest):
    code = "image_not_found"


class NotFound(FleetdError):
    status = 404
    code = "not_found"


class Conflict(FleetdError):
    status = 409
    code = "conflict"


class WaitTimeout(FleetdError):
    status = 408
    code = "timeout"


class RuntimeUnavailable(FleetdError):
    status = 503
    code = "docker_unavailable"


class RuntimeFailure(FleetdError):
    status = 502
    code = "docker_error"


class DaemonAlreadyRunning(FleetdError):
    """Another daemon holds this socket or state directory."""

    code = "already_running"


class Unavailable(FleetdError):
    status = 503
    code = "zone2_unavailable"
