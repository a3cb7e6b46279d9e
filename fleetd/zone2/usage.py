"""Token usage of OpenAI and Anthropic calls, read from request and response bodies and streams.

Pure functions: no I/O. Zone 2's cost tracker uses them to meter three APIs:

- OpenAI chat completions (``POST .../chat/completions``). ``usage`` holds ``prompt_tokens`` (cached tokens
  included), ``completion_tokens`` (reasoning included), ``prompt_tokens_details.cached_tokens`` and
  ``completion_tokens_details.reasoning_tokens``. A stream only carries usage when the request sets
  ``stream_options: {"include_usage": true}``: then every chunk has ``"usage": null`` and one extra chunk with
  ``"choices": []`` and the usage comes just before ``data: [DONE]``.
- OpenAI responses (``POST /v1/responses``). ``usage`` holds ``input_tokens`` (cached included),
  ``input_tokens_details.cached_tokens``, ``output_tokens`` and ``output_tokens_details.reasoning_tokens``. A stream
  ends with a ``response.completed`` (or ``response.incomplete`` / ``response.failed``) event whose ``response``
  carries the usage.
- Anthropic messages (``POST /v1/messages``). ``usage`` holds ``input_tokens`` (cache NOT included),
  ``cache_creation_input_tokens``, ``cache_read_input_tokens`` and ``output_tokens``. A stream starts with
  ``message_start`` (``message.usage``: input and cache counts), has ``message_delta`` events whose ``usage`` is
  cumulative (``output_tokens``, sometimes input and cache counts too) and ends with ``message_stop``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from typing import Any, Literal

from fleetd.zone2.targets import path_segments


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


API = Literal["openai_chat", "openai_responses", "anthropic_messages", "openai_embeddings"]


# Calls to an LLM provider that cost money but that zone 2 cannot meter (priced per image, per second of audio, per
# job, at batch rates, or with no usage in the answer), by the last segments of the path, lower case; "*" is any one
# segment. Legacy completions are here too: the table holds no prices for their models. Zone 2 refuses these
# (400 endpoint_not_metered) unless the role lets unpriced calls through: a cap that such a call can spend past is
# no cap.
UNMETERED_BILLABLE: tuple[tuple[str, ...], ...] = (
    ("completions",), ("images", "generations"), ("images", "edits"), ("images", "variations"),
    ("audio", "speech"), ("audio", "transcriptions"), ("audio", "translations"), ("fine_tuning", "jobs"),
    ("batches",), ("threads", "runs"), ("threads", "*", "runs"), ("realtime", "sessions"),
    ("realtime", "client_secrets"), ("videos",), ("messages", "batches"), ("v1", "complete"),
)


def unmetered_billable(method: str, path: str) -> bool:
    """Whether a request is a POST to an endpoint in UNMETERED_BILLABLE (and not one that ``classify`` meters)."""
    if method.upper() != "POST" or classify(method, path) is not None:
        return False
    segments = path_segments(path)
    for pattern in UNMETERED_BILLABLE:
        tail = segments[-len(pattern):]
        if len(tail) == len(pattern) and all(p in ("*", t) for p, t in zip(pattern, tail, strict=True)):
            return True
    return False


# ---------------------------------------------------------------------------------------------------------------
# Requests


def classify(method: str, path: str) -> API | None:
    """Which metered API a request goes to, or None when it is not a metered call.

    POST only, by the last segments of the broadest reading of the path (``targets.path_segments``: decoded, also
    twice and ``%2F`` as a separator, ``;params`` dropped, empty segments ignored, case-insensitive), so that no
    spelling an upstream would route to a metered endpoint slips past the meter:
    ``.../chat/completions``; ``/v1/responses``, ``/responses`` or Azure's ``/openai/responses``; ``/v1/messages`` or ``/messages``;
    ``.../embeddings`` (OpenAI's shape, also Azure's ``/openai/deployments/X/embeddings`` and the other vendors
    that copy it). Neighbours such as ``/v1/messages/count_tokens``, ``/v1/threads/x/messages`` or
    ``/v1/responses/x/cancel`` are not calls.
    """
    if method.upper() != "POST":
        return None
    segments = path_segments(path)
    if segments[-2:] == ["chat", "completions"]:
        return "openai_chat"
    if segments == ["responses"] or segments[-2:] in (["v1", "responses"], ["openai", "responses"]):
        return "openai_responses"
    if segments == ["messages"] or segments[-2:] == ["v1", "messages"]:
        return "anthropic_messages"
    if segments[-1:] == ["embeddings"]:
        return "openai_embeddings"
    return None


class BadLLMRequest(ValueError):
    """A metered call whose body cannot be metered. The message is shown to the agent in a 400."""


@dataclass(frozen=True)
class LLMRequest:
    api: API
    model: str
    stream: bool
    # chat: max_completion_tokens or max_tokens (the larger when both); responses: max_output_tokens;
    # anthropic: max_tokens; embeddings: 0 (they have no output tokens)
    max_output_tokens: int | None
    choices: int  # chat "n" (default 1), else 1
    input_token_bound: int  # an UPPER bound on the input tokens this request can be billed for
    body: bytes  # the body to send upstream (rewritten when usage was injected)
    usage_injected: bool  # True when WE added stream_options.include_usage (the client did not ask)
    service_tier: str | None = None  # as requested (OpenAI: "auto", "default", "flex", "priority")
    cache_1h: bool = False  # Anthropic: a cache_control asks for a 1-hour TTL (its writes cost more)
    # Input the body names but cannot size. ``previous_response_id`` (OpenAI Responses) continues a response whose
    # context zone 2 may have recorded. ``unsized_input``: a Responses ``conversation`` or stored ``prompt`` kept
    # upstream, or a file or document part that is not plain text (a PDF is billed by its pages, each page's text
    # and image, whether given inline, by URL or by file id). ``truncates``: ``"truncation": "auto"`` lets upstream
    # drop earlier items, so this call's usage does not measure the whole conversation that a later call continues.
    previous_response_id: str | None = None
    unsized_input: bool = False
    truncates: bool = False
    server_tools: tuple[str, ...] = ()  # tools the provider runs during the call (SERVER_TOOL_TYPES), as named
    # Chat Predicted Outputs: the prediction's tokens that the answer does not use are billed as output tokens too
    # (completion_tokens_details.rejected_prediction_tokens), beyond what max_tokens bounds; at most its length here
    prediction_bound: int = 0
    speed: str | None = None  # Anthropic: as requested ("fast" asks for fast mode)
    inference_geo: str | None = None  # Anthropic: as requested ("us" asks for US-only inference)
    # Anthropic threshold compaction (context_management.edits compact_*): the summary is a sampling step before the
    # reply, reading the conversation; the reply then reads the summary and what follows it. 1 without it.
    sampling_passes: int = 1
    # Anthropic server-side fallback (``fallbacks``): a declined request runs again on other models, each attempt
    # billed at its own model's prices (usage.iterations names them), some of them chosen by the API
    model_fallbacks: bool = False


# Tools the provider runs itself during a call. Each use is billed on top of the tokens (web search $10-25 per 1K
# calls at OpenAI, $10 per 1K at Anthropic; file search per call; code execution per container), and what they
# return is read by the model again over several internal turns, so nothing in the request bounds the call's cost.
# Client-side tools (function, custom, computer use, shell, bash, text editor, memory) are calls the agent makes
# itself, one request each. By type: OpenAI's names, Anthropic's MCP connector toolset, and the dated Anthropic ones
# by prefix (web_search_20250305, web_fetch_20250910, code_execution_20250825, tool_search_tool_regex_20251119, and
# advisor_20260301, whose advice another model writes at its own prices); also OpenAI's dated
# web_search_preview_2025_03_11 and web_search_2025_08_26.
SERVER_TOOL_TYPES = frozenset({"web_search", "web_search_preview", "file_search", "code_interpreter",
                               "image_generation", "mcp", "mcp_toolset"})
SERVER_TOOL_PREFIXES = ("web_search_", "web_fetch_", "code_execution_", "tool_search_tool_", "advisor_")


def server_tools(data: dict[str, Any]) -> tuple[str, ...]:
    """The server-side tools a request body offers the model: its ``tools`` of a SERVER_TOOL_TYPES type, Anthropic's
    ``mcp_servers`` (the MCP connector) and Chat Completions' ``web_search_options`` (the search models)."""
    found: list[str] = []
    tools = data.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        kind = tool.get("type") if isinstance(tool, dict) else None
        if isinstance(kind, str) and (kind in SERVER_TOOL_TYPES or kind.startswith(SERVER_TOOL_PREFIXES)):
            found.append(kind[:64])
    if data.get("mcp_servers"):
        found.append("mcp_servers")
    if data.get("web_search_options") is not None:
        found.append("web_search_options")
    return tuple(dict.fromkeys(found))


# Content parts whose token cost is not proportional to their size in the body: an image, file or document given by
# URL or file id is a few bytes here but hundreds or thousands of tokens upstream.
MEDIA_PART_TYPES = frozenset({"image_url", "input_image", "image", "document", "file", "input_file", "input_audio"})
MEDIA_PART_TOKENS = 3000
# Parts billed by pages (PDFs): no bound follows from their size here. A "document" whose source is text or content
# blocks holds its text in the body and is sized by it.
UNSIZED_PART_TYPES = frozenset({"document", "file", "input_file"})
SIZED_DOCUMENT_SOURCES = frozenset({"text", "content"})
MAX_RESPONSE_ID = 128  # a Responses id longer than this is not recorded (real ones are "resp_" and ~50 hex digits)
OVERHEAD_TOKENS = 1024


def input_token_bound(body: bytes, media_parts: int) -> int:
    """An upper bound on the input tokens a request body can be billed for.

    The tokenizers of both vendors are byte-level BPE: every token stands for at least one byte of UTF-8 text, so a
    text has at most as many tokens as bytes. The body is JSON, which holds every text the model reads, at least as
    long as the text itself (quotes, escapes and keys only add bytes), so ``len(body)`` bounds the text tokens.
    What the body does not show: the few tokens the chat template adds per message (smaller than the JSON
    punctuation of that message), the rendering of tool definitions and the vendors' tool-use system prompts
    (hundreds of tokens): ``OVERHEAD_TOKENS`` covers those. Media parts (images, audio, files, documents) are
    charged by pixels or pages rather than bytes and may be given by URL or file id, so each one found anywhere in
    the JSON adds ``MEDIA_PART_TOKENS`` (a high-detail image costs at most ~1.6k tokens at Anthropic and less than
    that at OpenAI; base64 data is already counted by its length).

    Not covered here (``LLMRequest.unsized_input`` and ``previous_response_id``: the cost tracker adds what it knows
    of them, or the model's input limit): state kept upstream that the body only names, a Responses
    ``previous_response_id`` / ``conversation`` / stored ``prompt``, and PDFs and files, billed by their pages.
    Not covered at all: server-side tools (web search, file search) that feed fetched text back to the model over
    several turns (``LLMRequest.server_tools``: refused unless the role lets unpriced calls through, and then the
    real usage settles those calls).
    """
    return len(body) + OVERHEAD_TOKENS + MEDIA_PART_TOKENS * media_parts


@dataclass(frozen=True)
class BodyScan:
    media_parts: int  # objects with a media ``type`` (MEDIA_PART_TYPES) at any depth
    one_hour_cache: bool  # a ``cache_control`` asks for a 1-hour TTL (``{"type": "ephemeral", "ttl": "1h"}``)
    unsized: bool  # a part billed by pages (UNSIZED_PART_TYPES, a document not of text)


def scan_body(data: object) -> BodyScan:
    """What the bound needs to know of a JSON request value, in one walk of it."""
    count = 0
    one_hour = unsized = False
    stack: list[object] = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            kind = item.get("type")
            if isinstance(kind, str) and kind in MEDIA_PART_TYPES:
                count += 1
                if kind in UNSIZED_PART_TYPES and not _sized_document(item):
                    unsized = True
            control = item.get("cache_control")
            if isinstance(control, dict) and control.get("ttl") == "1h":
                one_hour = True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return BodyScan(count, one_hour, unsized)


def _sized_document(part: dict[str, Any]) -> bool:
    """An Anthropic document whose text is in the body (``source`` of type text or content)."""
    source = part.get("source")
    return part.get("type") == "document" and isinstance(source, dict) and source.get("type") in SIZED_DOCUMENT_SOURCES


def parse_request(api: API, body: bytes) -> LLMRequest:
    """Read what metering needs from a request body; for a chat stream, make sure the usage is streamed.

    Raises BadLLMRequest for a body that is not a JSON object, has a key twice in one of its objects, has no string
    ``model``, has a max-tokens field that
    is not a non-negative integer, a chat ``n`` that is not a positive integer, a ``stream`` that is not a boolean or
    a chat ``stream_options`` that is not an object.
    """
    try:
        data = _UNIQUE_KEYS.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except DuplicateKey as exc:
        raise BadLLMRequest(f"request body has the key {exc.key[:64]!r} twice in one object: upstreams differ in "
                            "which one they read, so zone 2 cannot meter it") from None
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise BadLLMRequest("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadLLMRequest("request body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise BadLLMRequest('request body needs a string "model"')
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadLLMRequest('"stream" must be a boolean')
    stream = bool(stream)

    choices = 1
    prediction_bound = 0
    if api == "openai_chat":
        limits = [_max_tokens(data, "max_completion_tokens"), _max_tokens(data, "max_tokens")]
        given = [n for n in limits if n is not None]
        # Both may be sent; take the larger so that the reservation stays an upper bound either way.
        max_output = max(given) if given else None
        prediction = data.get("prediction")
        if prediction is not None:
            prediction_bound = len(_dumps(prediction))
        n = data.get("n")
        if n is not None:
            if not _is_int(n) or n < 1:
                raise BadLLMRequest('"n" must be a positive integer')
            choices = n
    elif api == "openai_responses":
        max_output = _max_tokens(data, "max_output_tokens")
        previous = data.get("previous_response_id")
        if previous is not None and not isinstance(previous, str):
            raise BadLLMRequest('"previous_response_id" must be a string')
    elif api == "openai_embeddings":
        max_output = 0
    else:
        max_output = _max_tokens(data, "max_tokens")

    tier = data.get("service_tier")
    if tier is not None and not isinstance(tier, str):
        raise BadLLMRequest('"service_tier" must be a string')
    labels = {key: data.get(key) for key in ("speed", "inference_geo")} if api == "anthropic_messages" else {}
    for key, value in labels.items():
        if value is not None and not isinstance(value, str):
            raise BadLLMRequest(f'"{key}" must be a string')

    sent = body
    injected = False
    if api == "openai_chat" and stream:
        options = data.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise BadLLMRequest('"stream_options" must be an object')
        if not (options and options.get("include_usage") is True):
            spliced = _with_usage_option(body) if "stream_options" not in data else None
            data["stream_options"] = {**(options or {}), "include_usage": True}
            sent = spliced or _dumps(data)
            injected = True

    scan = scan_body(data)
    longer = sent if len(sent) > len(body) else body  # the bound holds for whichever one is sent
    return LLMRequest(
        api=api,
        model=model,
        stream=stream,
        max_output_tokens=max_output,
        choices=choices,
        input_token_bound=input_token_bound(longer, scan.media_parts),
        body=sent,
        usage_injected=injected,
        service_tier=tier,
        cache_1h=scan.one_hour_cache and api == "anthropic_messages",
        previous_response_id=data.get("previous_response_id") if api == "openai_responses" else None,
        unsized_input=scan.unsized or (api == "openai_responses"
                                       and any(data.get(key) is not None for key in ("conversation", "prompt"))),
        truncates=api == "openai_responses" and data.get("truncation") == "auto",
        server_tools=server_tools(data),
        prediction_bound=prediction_bound,
        speed=labels.get("speed"),
        inference_geo=labels.get("inference_geo"),
        sampling_passes=2 if api == "anthropic_messages" and threshold_compaction(data) else 1,
        model_fallbacks=api == "anthropic_messages" and data.get("fallbacks") not in (None, [], ""),
    )


class DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice (after unescaping: ``"m\\u006fdel"`` is ``"model"``). Python keeps
    the last; an upstream that keeps the first would run another model or max_tokens than the one metered."""
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return data


_UNIQUE_KEYS = json.JSONDecoder(object_pairs_hook=_unique_keys)  # made once: json.loads(hook=) makes one a call


def threshold_compaction(data: dict[str, Any]) -> bool:
    """An Anthropic request whose ``context_management.edits`` has a compaction edit (``compact_20260112``)."""
    management = data.get("context_management")
    edits = management.get("edits") if isinstance(management, dict) else None
    return isinstance(edits, list) and any(
        isinstance(e, dict) and isinstance(e.get("type"), str) and e["type"].startswith("compact_") for e in edits)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _max_tokens(data: dict[str, Any], key: str) -> int | None:
    value: object = data.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadLLMRequest(f'"{key}" must be a non-negative integer')
    return value


_USAGE_OPTION = b',"stream_options":{"include_usage":true}'


def _with_usage_option(body: bytes) -> bytes | None:
    """``body`` (a JSON object without a top-level ``stream_options``) with ``stream_options.include_usage`` added
    as its last member, the client's bytes otherwise unchanged: a long conversation is not serialized again (that
    costs more than parsing it). None when the body is not plain UTF-8 JSON text ending in the object's ``}``."""
    end = len(body.rstrip(b" \t\r\n"))
    if end == 0 or body[end - 1] != 0x7D or json.detect_encoding(body) not in ("utf-8", "utf-8-sig"):
        return None
    return body[: end - 1] + _USAGE_OPTION + body[end - 1 :]


def _dumps(data: object) -> bytes:
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate escape (\ud800) in the client's JSON: keep it escaped
        return json.dumps(data, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------------------------------------
# Responses


def _count(value: object) -> int:
    """A token count from response JSON: garbage (strings, booleans, negatives, NaN) counts as 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float) and math.isfinite(value):
        return max(int(value), 0)
    return 0


def _detail(usage: dict[str, Any], key: str, field: str) -> int:
    details = usage.get(key)
    return _count(details.get(field)) if isinstance(details, dict) else 0


def _tier(value: object) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= 32 else None


def _openai_usage(usage: object, prefix_in: str, prefix_out: str, tier: object) -> Usage | None:
    """OpenAI's two usage shapes: chat (prompt/completion_tokens) and Responses (input/output_tokens).

    Cache reads (``cached_tokens``) and, from GPT-5.6 on, cache writes (``cache_write_tokens``, billed above the
    input price) are parts of the input count, as the details of it."""
    if not isinstance(usage, dict):
        return None
    details = f"{prefix_in}_tokens_details"
    cached = _detail(usage, details, "cached_tokens")
    written = _detail(usage, details, "cache_write_tokens")
    return Usage(
        input_tokens=max(_count(usage.get(f"{prefix_in}_tokens")) - cached - written, 0),
        cached_input_tokens=cached,
        cache_write_tokens=written,
        output_tokens=_count(usage.get(f"{prefix_out}_tokens")),
        reasoning_tokens=_detail(usage, f"{prefix_out}_tokens_details", "reasoning_tokens"),
        service_tier=_tier(tier),
    )


def openai_chat_usage(usage: object, service_tier: object = None) -> Usage | None:
    """Usage from an OpenAI chat ``usage`` object (None when it is not an object) and the completion's (or
    chunk's) ``service_tier``."""
    return _openai_usage(usage, "prompt", "completion", service_tier)


def openai_embeddings_usage(usage: object) -> Usage | None:
    """Usage from an embeddings ``usage`` object: ``prompt_tokens`` (OpenAI, Azure, Mistral), or ``total_tokens``
    alone (Voyage), all of it input."""
    if not isinstance(usage, dict):
        return None
    tokens = usage.get("prompt_tokens")
    return Usage(input_tokens=_count(usage.get("total_tokens") if tokens is None else tokens))


def openai_responses_usage(usage: object, service_tier: object = None, response_id: object = None) -> Usage | None:
    """Usage from an OpenAI Responses ``usage`` object (None when it is not an object), the response's
    ``service_tier`` and its ``id``."""
    found = _openai_usage(usage, "input", "output", service_tier)
    if found is None or not (isinstance(response_id, str) and 0 < len(response_id) <= MAX_RESPONSE_ID):
        return found
    return replace(found, response_id=response_id)


def anthropic_usage(usage: object) -> Usage | None:
    """Usage from an Anthropic ``usage`` object (None when it is not an object).

    ``cache_creation_input_tokens`` counts every cache write; ``cache_creation.ephemeral_1h_input_tokens`` says how
    many of them went to 1-hour entries, which cost more than the 5-minute ones. Server-side compaction is a sampling
    step of its own that the top-level counts leave out: each ``compaction`` entry of ``usage.iterations`` is added
    (the other entries are what the top level sums).
    """
    if not isinstance(usage, dict):
        return None
    uncached, cached, written, output, one_hour = (
        sum(column) for column in zip(*map(_anthropic_counts, [usage, *_compaction_iterations(usage)]), strict=True))
    return Usage(
        input_tokens=uncached,
        cached_input_tokens=cached,
        cache_write_tokens=written,
        output_tokens=output,
        cache_write_1h_tokens=one_hour,
        service_tier=_tier(usage.get("service_tier")),
        speed=_tier(usage.get("speed")),
        inference_geo=_tier(usage.get("inference_geo")),
    )


def _anthropic_counts(usage: dict[str, Any]) -> tuple[int, int, int, int, int]:
    """(input, cache reads, cache writes, output, 1-hour cache writes) of one Anthropic usage object or iteration."""
    one_hour = _detail(usage, "cache_creation", "ephemeral_1h_input_tokens")
    five_minutes = _detail(usage, "cache_creation", "ephemeral_5m_input_tokens")
    return (_count(usage.get("input_tokens")), _count(usage.get("cache_read_input_tokens")),
            max(_count(usage.get("cache_creation_input_tokens")), one_hour + five_minutes),
            _count(usage.get("output_tokens")), one_hour)


def _compaction_iterations(usage: dict[str, Any]) -> list[dict[str, Any]]:
    iterations = usage.get("iterations")
    if not isinstance(iterations, list):
        return []
    return [i for i in iterations if isinstance(i, dict) and i.get("type") == "compaction"]


def usage_in(api: API, obj: dict[str, Any]) -> Usage | None:
    """The usage of a whole answer object: a chat completion (or chunk), a Responses response, an Anthropic message,
    an embeddings list. OpenAI puts the service tier beside ``usage``; Anthropic inside it."""
    if api == "openai_chat":
        return openai_chat_usage(obj.get("usage"), obj.get("service_tier"))
    if api == "openai_responses":
        return openai_responses_usage(obj.get("usage"), obj.get("service_tier"), obj.get("id"))
    if api == "openai_embeddings":
        return openai_embeddings_usage(obj.get("usage"))
    return anthropic_usage(obj.get("usage"))


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def usage_from_body(api: API, body: bytes) -> Usage | None:
    """Usage of a non-streamed JSON response; None when it has none (error bodies, garbage).

    A body that turns out to be an event stream after all is read as one.
    """
    data = _loads(body)
    if isinstance(data, dict):
        return usage_in(api, data)
    if data is None and (b"data:" in body):
        meter = StreamMeter(api)
        meter.feed(body)
        meter.flush()
        return meter.usage
    return None


_DECODER = json.JSONDecoder()
_TIER_FIELD = re.compile(rb'"service_tier"\s*:\s*"([^"\\]{1,32})"')


def usage_from_tail(api: API, tail: bytes) -> Usage | None:
    """Usage from the end of a JSON answer too large to parse whole: the last ``"usage": {...}`` in it (every API
    puts the usage after the content: choices, output, content blocks, embeddings) and the last ``service_tier``.
    None when the tail holds none. A ``"usage"`` inside a string has its quotes escaped and does not match."""
    at = len(tail)
    while (at := tail.rfind(b'"usage"', 0, at)) != -1:
        found = _USAGE_OBJECT.match(tail, at)
        if found is None:
            continue
        try:
            usage, _ = _DECODER.raw_decode(tail[found.end() - 1:].decode("utf-8", "replace"))
        except ValueError:
            continue
        tiers = _TIER_FIELD.findall(tail)
        return usage_in(api, {"usage": usage, "service_tier": tiers[-1].decode() if tiers else None})
    return None


# ---------------------------------------------------------------------------------------------------------------
# Streams

_EOL = re.compile(rb"\r\n|\r|\n")
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')  # a non-null usage: "usage":null does not match
_RESPONSES_END = frozenset({"response.completed", "response.incomplete", "response.failed"})
_RESPONSES_END_BYTES = tuple(kind.encode() for kind in _RESPONSES_END)
# What an event must hold to matter to the meter of each API (usage to read, or the end of the stream): a chunk of
# whole events in which this is not found is passed on without being split into lines. It is looser than the
# per-event checks below ("usage" and its object may sit on different data lines), never stricter.
_USAGE_ANYWHERE = rb'"usage"[^"{]*\{'
_MARKERS: dict[str, re.Pattern[bytes]] = {
    "openai_chat": re.compile(_USAGE_ANYWHERE + rb"|\[DONE\]"),
    "openai_responses": re.compile(b"|".join(re.escape(kind) for kind in _RESPONSES_END_BYTES)),
    "anthropic_messages": re.compile(_USAGE_ANYWHERE + rb"|message_stop"),
    "openai_embeddings": re.compile(_USAGE_ANYWHERE),  # never streamed; read as one if an upstream does
}

MAX_EVENT_BYTES = 64 << 20  # an event with more data than this is forwarded but not parsed
MAX_HELD_BYTES = 256 << 10  # hiding mode: an event not complete at this size is forwarded as it comes


class StreamMeter:
    """Reads usage from a server-sent-event stream while it passes through.

    ``feed`` every chunk from upstream and send on what it returns; ``flush`` at the end of the stream.

    By default chunks pass unchanged and at once: a copy is parsed, keeping only the incomplete trailing line and
    the data of the current event. With ``hide_usage_chunk`` (an OpenAI chat stream whose usage we asked for and the
    client did not) only whole events are forwarded, and the event carrying ``"choices": []`` with a non-null
    ``usage`` is dropped. Events end at a blank line; lines end with ``\\r\\n``, ``\\n`` or ``\\r``.

    Parsing never raises: events that are not JSON or not of the expected shape are ignored.
    """

    def __init__(self, api: API, hide_usage_chunk: bool = False) -> None:
        self.api: API = api
        self.hide_usage_chunk = hide_usage_chunk
        self._markers = _MARKERS[api].search
        self._usage: Usage | None = None
        self._complete = False
        # line splitting
        self._partial = bytearray()  # the current line, not terminated yet
        self._partial_dropped = False  # the current line outgrew MAX_EVENT_BYTES: skip it
        self._pending_cr = False  # the last chunk ended with \r: a \n starting the next one belongs to it
        # the event being read
        self._event_name = b""
        self._data: list[bytes] = []
        self._data_size = 0
        self._data_dropped = False
        # anthropic: message_start's counts (and its cache_creation split), raised by later message_delta counts
        self._anthropic: dict[str, int] = {}
        self._anthropic_creation: dict[str, int] = {}
        self._anthropic_labels: dict[str, str] = {}  # service_tier, speed, inference_geo: the latest given
        self._anthropic_iterations: list[Any] = []  # usage.iterations, the latest given (compaction steps)
        # hiding mode
        self._held = bytearray()  # raw bytes of the current event, not forwarded yet
        self._released = False  # the current event outgrew MAX_HELD_BYTES and is being forwarded as it comes
        # an event ended with \r at a chunk's end: a \n starting the next chunk ends that event too, so it goes where
        # the event went (dropped, or forwarded at once) rather than into the next event
        self._lf_after_event: Literal["drop", "forward"] | None = None

    @property
    def usage(self) -> Usage | None:
        """The latest usage seen, or None."""
        return self._usage

    @property
    def complete(self) -> bool:
        """Whether the stream's end marker was seen (chat ``[DONE]``, responses ``response.completed`` /
        ``response.incomplete`` / ``response.failed``, anthropic ``message_stop``)."""
        return self._complete

    def feed(self, chunk: bytes) -> bytes:
        """Take a chunk from upstream; return the bytes to forward to the client now."""
        if self._between_events() and chunk.endswith(b"\n\n") and self._markers(chunk) is None:
            return chunk  # whole events, none of which the meter reads or hides (most chunks of a stream)
        if not self.hide_usage_chunk:
            if chunk:
                self._scan(bytes(chunk), None)
            return chunk
        out: list[bytes] = []
        if chunk:
            self._scan(bytes(chunk), out)
        return b"".join(out)

    def _between_events(self) -> bool:
        """Nothing of an unfinished line or event is pending: the next byte starts a new event."""
        return not (self._partial or self._partial_dropped or self._pending_cr or self._data or self._data_dropped
                    or self._event_name or self._held or self._released)

    def flush(self) -> bytes:
        """End of the stream: parse what is left and return whatever is still held."""
        if self._partial or self._partial_dropped:
            if self._partial_dropped:
                self._data_dropped = True
            else:
                self._field(bytes(self._partial))
            self._partial.clear()
            self._partial_dropped = False
        self._dispatch()
        self._pending_cr = self._released = False
        self._lf_after_event = None
        held = bytes(self._held)
        self._held.clear()
        return held

    # -- parsing ---------------------------------------------------------------------------------------------

    def _scan(self, data: bytes, out: list[bytes] | None) -> None:
        """Split ``data`` into lines, handle them, and (hiding mode) append to ``out`` what is to be forwarded."""
        n = len(data)
        pos = 0
        start = 0  # hiding mode: where the bytes of data not forwarded, dropped or held yet begin
        if self._pending_cr:
            self._pending_cr = False
            if data[0] == 0x0A:  # the \n of a \r\n split across chunks
                pos = 1
                if out is not None and self._lf_after_event is not None:
                    if self._lf_after_event == "forward":
                        out.append(b"\n")
                    start = 1
        self._lf_after_event = None
        search = _EOL.search
        while pos < n:
            match = search(data, pos)
            if match is None:
                self._keep_partial(data, pos)
                break
            end = match.end()
            if end == n and data[-1] == 0x0D:
                self._pending_cr = True
            if self._partial_dropped:
                self._partial_dropped = False
                self._data_dropped = True
            elif self._partial or match.start() > pos:
                if self._partial:
                    self._partial += data[pos : match.start()]
                    line = bytes(self._partial)
                    self._partial.clear()
                else:
                    line = data[pos : match.start()]
                self._field(line)
            else:  # a blank line: the end of an event
                drop = self._dispatch()
                if out is not None:
                    if drop and not self._released:
                        self._held.clear()
                        if self._pending_cr:
                            self._lf_after_event = "drop"
                    else:
                        if self._held:
                            out.append(bytes(self._held))
                            self._held.clear()
                        out.append(data[start:end])
                        if self._pending_cr:
                            self._lf_after_event = "forward"
                    self._released = False
                    start = end
            pos = end
        if out is not None and start < n:
            if self._released:
                out.append(data[start:])
            else:
                self._held += data[start:]
                if len(self._held) > MAX_HELD_BYTES:
                    out.append(bytes(self._held))
                    self._held.clear()
                    self._released = True

    def _keep_partial(self, data: bytes, pos: int) -> None:
        if self._partial_dropped:
            return
        self._partial += data[pos:]
        if len(self._partial) > MAX_EVENT_BYTES:
            self._partial.clear()
            self._partial_dropped = True

    def _field(self, line: bytes) -> None:
        """One non-blank line of an event."""
        if line[0] == 0x3A:  # ":" starts a comment
            return
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data_size += len(value) + 1
            if self._data_size > MAX_EVENT_BYTES:
                self._data_dropped = True
                self._data.clear()
            elif not self._data_dropped:
                self._data.append(value)
        elif name == b"event":
            self._event_name = value

    def _dispatch(self) -> bool:
        """The current event is complete: read it, then start a new one. True when it is to be hidden."""
        lines, name, dropped = self._data, self._event_name, self._data_dropped
        self._data, self._event_name, self._data_dropped, self._data_size = [], b"", False, 0
        if dropped or not lines:
            return False
        data = lines[0] if len(lines) == 1 else b"\n".join(lines)
        try:
            if self.api == "openai_chat":
                return self._chat_event(data)
            if self.api == "openai_responses":
                self._responses_event(name, data)
            elif self.api == "openai_embeddings":
                self._embeddings_event(data)
            else:
                self._anthropic_event(name, data)
        except Exception:  # a safety net: metering must never break the stream
            return False
        return False

    def _embeddings_event(self, data: bytes) -> None:
        event = _with_usage(data)
        if event is not None:
            self._usage = usage_in("openai_embeddings", event) or self._usage

    def _chat_event(self, data: bytes) -> bool:
        if len(data) < 32 and data.strip() == b"[DONE]":
            self._complete = True
            return False
        event = _with_usage(data)
        if event is None:
            return False
        usage = usage_in("openai_chat", event)
        if usage is None:
            return False
        self._usage = usage
        choices = event.get("choices")
        return self.hide_usage_chunk and (choices is None or choices == [])

    def _responses_event(self, name: bytes, data: bytes) -> None:
        if name not in _RESPONSES_END_BYTES and not any(kind in data for kind in _RESPONSES_END_BYTES):
            return
        event = _loads(data)
        if not isinstance(event, dict):
            return
        kind = event.get("type", name.decode(errors="replace"))
        if not isinstance(kind, str) or kind not in _RESPONSES_END:
            return
        self._complete = True
        response = event.get("response")
        if isinstance(response, dict):
            usage = usage_in("openai_responses", response)
            if usage is not None:
                self._usage = usage

    def _anthropic_event(self, name: bytes, data: bytes) -> None:
        if b"message_stop" not in data and name != b"message_stop" and _USAGE_OBJECT.search(data) is None:
            return
        event = _loads(data)
        if not isinstance(event, dict):
            return
        kind = event.get("type", name.decode(errors="replace"))
        if kind == "message_stop":
            self._complete = True
            return
        if kind == "message_start":
            message = event.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if not isinstance(usage, dict):
                return
            self._anthropic, self._anthropic_creation, self._anthropic_labels = {}, {}, {}
            self._anthropic_iterations = []
        elif kind == "message_delta":
            usage = event.get("usage")
            if not isinstance(usage, dict):
                return
        else:
            return
        # message_delta counts are cumulative: the larger count is the later one, whichever event carried it
        _keep_larger(self._anthropic, usage,
                     ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens"))
        creation = usage.get("cache_creation")
        if isinstance(creation, dict):
            _keep_larger(self._anthropic_creation, creation, ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"))
        for key in _ANTHROPIC_LABELS:
            label = _tier(usage.get(key))
            if label is not None:
                self._anthropic_labels[key] = label
        iterations = usage.get("iterations")
        if isinstance(iterations, list) and len(iterations) >= len(self._anthropic_iterations):
            self._anthropic_iterations = iterations
        self._usage = anthropic_usage({**self._anthropic, "cache_creation": self._anthropic_creation,
                                       **self._anthropic_labels, "iterations": self._anthropic_iterations})


_ANTHROPIC_LABELS = ("service_tier", "speed", "inference_geo")


def _with_usage(data: bytes) -> dict[str, Any] | None:
    """An event's JSON object when it holds a non-null ``usage`` (a cheap search first, then the parse)."""
    if _USAGE_OBJECT.search(data) is None:
        return None
    event = _loads(data)
    return event if isinstance(event, dict) else None


def _keep_larger(counts: dict[str, int], usage: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Raise each count in ``counts`` to the one ``usage`` gives for it, if any."""
    for key in keys:
        value = usage.get(key)
        if value is not None:
            counts[key] = max(counts.get(key, 0), _count(value))
