"""What metering knows of an LLM call, whatever its provider. Pure: no I/O.

A provider adapter (``fleetd.zone2.providers``) turns a request body into an :class:`LLMRequest` (what the cost
tracker reserves for) and an answer into a :class:`Usage` (what it settles with). The value types and the body-reading
helpers every adapter shares live here.
"""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import dataclass, field, replace
from typing import Any

# What the body does not show of the input: the chat template's tokens per message (fewer than the JSON punctuation
# of that message), tool definitions as rendered, the vendors' tool-use system prompts (hundreds of tokens).
OVERHEAD_TOKENS = 1024
MAX_MODEL = 200  # characters of a model name read from an answer (as a price's model id)


class BadLLMRequest(ValueError):
    """A metered call whose body cannot be metered. The message is shown to the agent in a 400."""


@dataclass(frozen=True)
class Usage:
    """Tokens of one call by how they are billed. ``output_tokens`` includes reasoning tokens."""

    input_tokens: int = 0  # uncached input, billed at the input price
    cached_input_tokens: int = 0  # cache reads (OpenAI cached_tokens, Anthropic cache_read_input_tokens)
    cache_write_tokens: int = 0  # Anthropic cache_creation_input_tokens
    output_tokens: int = 0  # completion/output tokens, reasoning included
    reasoning_tokens: int = 0  # informational: already part of output_tokens
    cache_write_1h_tokens: int = 0  # the part of cache_write_tokens written to 1-hour cache entries (Anthropic)
    service_tier: str | None = None  # the tier the upstream says it served the call at (OpenAI: "priority", ...)
    response_id: str | None = None  # OpenAI Responses: the answer's id, which a later call may continue from
    speed: str | None = None  # Anthropic: "fast" when fast mode served the call (priced at a multiple)
    inference_geo: str | None = None  # Anthropic: where it ran ("us" for US-only inference, priced at a multiple)
    # the model the answer says ran (an Azure deployment chooses its own); what was used, not how much: not compared
    model: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Media:
    """Input the body holds or names that is billed by pixels, pages or seconds rather than by bytes."""

    images: int = 0  # images at the model's default (worst) detail: the price's image_tokens each
    images_low: int = 0  # images asked for at low detail (OpenAI "detail": "low"): image_tokens_low each
    tokens: int = 0  # media tokens the body itself asks for (Gemini mediaResolution.numTokens)
    # A part no bound follows for: a PDF or file (billed by its pages), audio or video (by their length), media by
    # file id or URL whose kind is not known. The cost tracker reserves the model's input limit for the call.
    unsized: bool = False


@dataclass(frozen=True)
class LLMRequest:
    """A metered call as its provider adapter read it: everything the cost tracker needs, in no vendor's terms."""

    api: str  # the adapter's name ("openai_chat", ...): the ledger's api column
    model: str
    stream: bool
    # The largest output the request allows (None: up to the model's max_output_tokens, the price's). A provider
    # whose output is free (embeddings) has ``output_free``.
    max_output_tokens: int | None
    choices: int  # answers generated (chat "n", Gemini candidateCount), each up to max_output_tokens
    input_token_bound: int  # an UPPER bound on the input tokens of the body's text (media apart)
    body: bytes  # the body to send upstream (rewritten when usage was injected)
    usage_injected: bool = False  # True when zone 2 asked the stream for its usage (the client did not)
    output_free: bool = False
    # Thinking billed as output beyond max_output_tokens, per answer (Gemini's thinkingBudget; None: up to the
    # model's max_output_tokens again, when the budget is dynamic or not given)
    thinking_tokens: int | None = 0
    media: Media = field(default_factory=Media)
    service_tier: str | None = None  # as requested (OpenAI: "auto", "default", "flex", "priority")
    priority: bool = False  # asks to be served (and billed) at the provider's priority tier
    fast: bool = False  # Anthropic: asks for fast mode (billed at the model's fast multiple)
    us_only: bool = False  # Anthropic: may run US-only (asked, or a workspace default unless "global" is asked)
    cache_1h: bool = False  # Anthropic: a cache_control asks for a 1-hour TTL (its writes cost more)
    # Input kept upstream that the body only names. ``previous_response_id`` (OpenAI Responses) continues a response
    # whose context zone 2 may have recorded. ``unsized_input``: state no bound follows for (a conversation, a
    # stored prompt, items by reference, a cached content). ``truncates``: upstream may drop earlier items, so this
    # call's usage does not measure the whole conversation that a later call continues.
    previous_response_id: str | None = None
    unsized_input: bool = False
    truncates: bool = False
    server_tools: tuple[str, ...] = ()  # tools the provider runs during the call, as named
    # Chat Predicted Outputs: the prediction's tokens that the answer does not use are billed as output tokens too,
    # beyond what max_tokens bounds; at most its length here
    prediction_bound: int = 0
    speed: str | None = None  # Anthropic: as requested ("fast" asks for fast mode)
    inference_geo: str | None = None  # Anthropic: as requested ("us" asks for US-only inference)
    # A compaction step before the reply (Anthropic threshold compaction, an OpenAI compaction trigger): a sampling
    # pass reading the conversation, then the reply reading the summary and what follows it. 1 without it.
    sampling_passes: int = 1
    # Anthropic server-side fallback (``fallbacks``): a declined request runs again on other models, each attempt
    # billed at its own model's prices, some of them chosen by the API
    model_fallbacks: bool = False


def input_token_bound(body: bytes) -> int:
    """An upper bound on the text input tokens a request body can be billed for.

    The tokenizers of the vendors are byte-level BPE: every token stands for at least one byte of UTF-8 text, so a
    text has at most as many tokens as bytes. The body is JSON, which holds every text the model reads, at least as
    long as the text itself (quotes, escapes and keys only add bytes), so ``len(body)`` bounds the text tokens;
    ``OVERHEAD_TOKENS`` covers what the body does not show. Media (``Media``) and state kept upstream are added by
    the cost tracker, which knows the model's prices and limits.
    """
    return len(body) + OVERHEAD_TOKENS


# -- reading request bodies ---------------------------------------------------------------------------------------


class DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _fold(key: str) -> str:
    """A key as a case-insensitive parser matches it (Go's encoding/json folds "Model", and U+017F into "s")."""
    return key.lower() if key.isascii() else unicodedata.normalize("NFKC", key).casefold()


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice (after unescaping: ``"m\\u006fdel"`` is ``"model"``), also in
    another case (``"Model"``, ``"max_token\\u017f"``). Python keeps the last; an upstream that keeps the first, or
    matches keys whatever their case, would run another model or max_tokens than the one metered."""
    data = dict(pairs)
    if len(pairs) > 1 and len({_fold(key) for key, _ in pairs}) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if _fold(key) in seen:
                raise DuplicateKey(key)
            seen.add(_fold(key))
    return data


_UNIQUE_KEYS = json.JSONDecoder(object_pairs_hook=_unique_keys)  # made once: json.loads(hook=) makes one a call


# Parsing JSON costs far more memory than its bytes: ``[{},{},...]`` of 9.7 MB peaked near 283 MB, more than zone 2
# has. A body is parsed only when an upper bound on what it parses into (``parse_cost``) is within this.
PARSE_BUDGET = 48 << 20
HEAVY_CONTAINERS = 5000  # JSON objects and arrays from which a body's parse goes to a thread
_COSTS = {b"{": 200, b"[": 80, b",": 64, b":": 64}  # bytes a dict, a list, a value beyond its text costs at most
_MAX_PRECISE_QUOTES = 20_000  # past this many strings' quotes, reading them out costs more CPU than it is worth


class JsonShape:
    """What ``parse_cost`` counts, counted chunk by chunk as a body arrives: a few microseconds between reads
    rather than tens of milliseconds of zone 2's one thread after the last one."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(_COSTS, 0)

    def feed(self, chunk: bytes) -> None:
        for char in _COSTS:
            self.counts[char] += chunk.count(char)

    @property
    def containers(self) -> int:
        """Objects and arrays, at most (a brace in a string counts too)."""
        return self.counts[b"{"] + self.counts[b"["]


def parse_cost(body: bytes, counts: dict[bytes, int] | None = None) -> int:
    """An upper bound on the memory ``json.loads(body)`` takes: its bytes, plus each container and each value (the
    commas and colons between them) at what the largest of its kind costs. Counted in C over the bytes (or given,
    by a JsonShape fed the body); when that says too much, the characters inside strings are taken out of the count
    (a CSV pasted into a message has many commas that cost nothing), unless there are so many strings that reading
    them out would cost too much CPU."""
    counts = dict(counts) if counts is not None else {char: body.count(char) for char in _COSTS}
    cost = len(body) + sum(_COSTS[char] * n for char, n in counts.items())
    if cost <= PARSE_BUDGET:
        return cost
    # Escaped backslashes, then escaped quotes, out: what is left of the quotes delimit strings, every other piece
    # is outside one (all in C; a Python loop over the pieces only, at most _MAX_PRECISE_QUOTES of them).
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    if unescaped.count(b'"') > _MAX_PRECISE_QUOTES:
        return cost
    outside = unescaped.split(b'"')[0::2]
    counts = {char: sum(piece.count(char) for piece in outside) for char in _COSTS}
    return len(body) + sum(_COSTS[char] * n for char, n in counts.items())


def parse_object(body: bytes) -> dict[str, Any]:
    """A request body as a JSON object; BadLLMRequest if it is not one, has a key twice in any of its objects, or
    would take more memory to parse than PARSE_BUDGET."""
    if len(body) > 1 << 16 and parse_cost(body) > PARSE_BUDGET:
        raise BadLLMRequest(f"request body has too many JSON values to meter (parsing it would take more than "
                            f"{PARSE_BUDGET >> 20} MiB): send fewer, larger ones")
    try:
        data = _UNIQUE_KEYS.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except DuplicateKey as exc:
        raise BadLLMRequest(f"request body has the key {exc.key[:64]!r} twice in one object (or in two cases): "
                            "upstreams differ in which one they read, so zone 2 cannot meter it") from None
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise BadLLMRequest("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadLLMRequest("request body must be a JSON object")
    return data


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def max_tokens_field(data: dict[str, Any], key: str) -> int | None:
    """A max-tokens field: absent or null (None), or a non-negative integer (else BadLLMRequest)."""
    value: object = data.get(key)
    if value is None:
        return None
    if not is_int(value) or value < 0:  # type: ignore[operator]
        raise BadLLMRequest(f'"{key}" must be a non-negative integer')
    return value  # type: ignore[return-value]


def string_field(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise BadLLMRequest(f'"{key}" must be a string')
    return value


def model_field(data: dict[str, Any]) -> str:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise BadLLMRequest('request body needs a string "model"')
    return model


def stream_field(data: dict[str, Any]) -> bool:
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadLLMRequest('"stream" must be a boolean')
    return bool(stream)


def dumps(data: object) -> bytes:
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate escape (\ud800) in the client's JSON: keep it escaped
        return json.dumps(data, separators=(",", ":")).encode()


def walk(data: object) -> list[dict[str, Any]]:
    """Every JSON object in ``data``, at any depth (iteratively: a deep body cannot exhaust the stack)."""
    found: list[dict[str, Any]] = []
    stack: list[object] = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


# -- reading answers ------------------------------------------------------------------------------------------------


def loads(data: bytes | str) -> Any:
    """JSON, or None when it is not JSON (answers are read, never trusted)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def count(value: object) -> int:
    """A token count from response JSON: garbage (strings, booleans, negatives, NaN) counts as 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float) and math.isfinite(value):
        return max(int(value), 0)
    return 0


def detail(usage: dict[str, Any], key: str, field_name: str) -> int:
    details = usage.get(key)
    return count(details.get(field_name)) if isinstance(details, dict) else 0


def served_by(usage: Usage | None, model: object) -> Usage | None:
    """``usage`` with the model the answer names (a string of at most MAX_MODEL characters), if any."""
    if usage is None or not isinstance(model, str) or not 0 < len(model) <= MAX_MODEL:
        return usage
    return replace(usage, model=model)


def label(value: object) -> str | None:
    """A short label from response JSON (a service tier, a speed, a region), or None."""
    return value if isinstance(value, str) and 0 < len(value) <= 32 else None


def keep_larger(counts: dict[str, int], usage: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Raise each count in ``counts`` to the one ``usage`` gives for it, if any (cumulative counts in a stream)."""
    for key in keys:
        value = usage.get(key)
        if value is not None:
            counts[key] = max(counts.get(key, 0), count(value))
