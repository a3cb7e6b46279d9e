"""A credential's provider kind: which rules zone 2 applies to the calls made with it. Pure, no I/O.

An LLM provider bills for calls that zone 2 may not know how to meter (a new endpoint, a vendor's own one, an
API reached under another path). For a credential of an LLM provider kind, zone 2 is default-deny: a request
that may cost money (any method but GET, HEAD and DELETE) goes through only to an endpoint zone 2 meters or knows
to be free; the rest gets 400 ``endpoint_not_metered`` unless the agent's role allows unpriced calls. A
``generic`` credential (a search API, a tool) is a plain relay, except that calls to metered LLM endpoints are
metered on it too and the known unmeterable ones refused.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fleetd.zone2.providers import classify
from fleetd.zone2.targets import path_readings

GENERIC = "generic"
# LLM provider kinds; Bedrock has no endpoint zone 2 meters: all of its billable calls are refused.
LLM_KINDS = ("openai", "anthropic", "azure-openai", "gemini", "bedrock")
KINDS = (*LLM_KINDS, GENERIC)

# Known hosts of each kind (exact, or a suffix when it starts with a dot). OpenAI-compatible vendors are "openai":
# they bill like it, and their own endpoints (OCR, FIM, rerank, ...) are exactly what default-deny is for.
KNOWN_HOSTS: dict[str, tuple[str, ...]] = {
    "openai": ("api.openai.com", "api.mistral.ai", "api.groq.com", "api.deepseek.com", "api.x.ai",
               "api.together.xyz", "api.fireworks.ai", "openrouter.ai", "api.perplexity.ai", "api.cerebras.ai"),
    "anthropic": ("api.anthropic.com",),
    "azure-openai": (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com"),
    "gemini": ("generativelanguage.googleapis.com", "aiplatform.googleapis.com", "-aiplatform.googleapis.com"),
    "bedrock": (".amazonaws.com",),  # bedrock-runtime.REGION.amazonaws.com and the like (checked below)
}

# Methods that never cost money at any provider: reads and deletions.
FREE_METHODS = frozenset({"GET", "HEAD", "DELETE"})
# POSTs that cost nothing (token counting, cancelling, uploading a file), by the last segments of the path ("*": any
# one segment; a segment ending in ":" matches a Gemini method call of that name on any resource).
FREE_ENDPOINTS: tuple[tuple[str, ...], ...] = (
    ("messages", "count_tokens"),  # Anthropic: free, rate limited on its own
    ("responses", "input_tokens"),  # OpenAI: a count, no generation
    ("responses", "*", "cancel"),
    ("v1", "files"),  # an upload: storage of files is not billed (vector stores are, and are not here)
    ("v1beta", "files"),  # Gemini's upload (/upload/v1beta/files) and file metadata
    (":counttokens",),  # Gemini
)


# Calls to an LLM provider that cost money but that zone 2 cannot meter (priced per image, per second of audio, per
# job, at batch rates, or with no usage in the answer), by the last segments of the path; "*" is any one segment.
# Legacy completions are here too: the table holds no prices for their models. Refused (400 endpoint_not_metered)
# whatever the credential's kind, unless the role lets unpriced calls through: a cap that such a call can spend
# past is no cap.
UNMETERED_BILLABLE: tuple[tuple[str, ...], ...] = (
    ("completions",), ("images", "generations"), ("images", "edits"), ("images", "variations"),
    ("audio", "speech"), ("audio", "transcriptions"), ("audio", "translations"), ("fine_tuning", "jobs"),
    ("batches",), ("threads", "runs"), ("threads", "*", "runs"), ("realtime", "sessions"),
    ("realtime", "client_secrets"), ("videos",), ("messages", "batches"), ("v1", "complete"),
)


class UnknownKind(ValueError):
    """A provider kind fleetd does not know."""


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise UnknownKind(f"unknown provider {kind!r}: one of {', '.join(KINDS)}")
    return kind


def infer_kind(upstream: str) -> str:
    """The kind of a credential bound to ``upstream``, from its host: a known provider's, else ``generic``."""
    host = (urlsplit(upstream).hostname or "").lower()
    for kind, hosts in KNOWN_HOSTS.items():
        for known in hosts:
            if host == known or (known[0] in ".-" and host.endswith(known)):
                if kind == "bedrock" and not host.startswith("bedrock"):
                    continue
                return kind
    return GENERIC


def is_llm(kind: str) -> bool:
    return kind in LLM_KINDS


def _ends_with(segments: list[str], patterns: tuple[tuple[str, ...], ...]) -> bool:
    """Do the path's last segments match one of ``patterns`` ("*" any one segment; ":name" a Gemini method)?"""
    for pattern in patterns:
        if pattern[0].startswith(":"):
            if segments and segments[-1].endswith(pattern[0]):
                return True
            continue
        tail = segments[-len(pattern):]
        if len(tail) == len(pattern) and all(p in ("*", t) for p, t in zip(pattern, tail, strict=True)):
            return True
    return False


def free_call(method: str, path: str) -> bool:
    """A request that costs nothing at an LLM provider: a read, a deletion, or a POST in FREE_ENDPOINTS under every
    reading of its path."""
    if method.upper() in FREE_METHODS:
        return True
    return method.upper() == "POST" and all(_ends_with(r, FREE_ENDPOINTS) for r in path_readings(path))


def unmetered_billable(method: str, path: str) -> bool:
    """A POST to an endpoint in UNMETERED_BILLABLE under some reading of its path, and not one that
    ``providers.classify`` meters."""
    return (method.upper() == "POST" and classify(method, path) is None
            and any(_ends_with(r, UNMETERED_BILLABLE) for r in path_readings(path)))
