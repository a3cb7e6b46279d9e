"""The simulator's core: its knobs, what it has seen, and what every simulated API shares."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class SimConfig:
    latency_ms: int = 0
    chunk_delay_ms: int = 10
    output_tokens: int = 16
    rate_limit: int = 0  # answer this many next calls with 429
    retry_after: int = 1
    fail: int = 0  # answer this many next calls with fail_status
    fail_status: int = 500
    cached_tokens: int = 0  # of the input, reported as cache reads (at most the input)
    cache_write_tokens: int = 0  # Anthropic: reported as cache_creation_input_tokens
    cache_write_1h_tokens: int = 0  # Anthropic: of those, reported as written to 1-hour entries (the rest 5-minute)
    service_tier: str | None = None  # OpenAI: the tier answers name (default: the one asked for; "auto" -> "default")
    reasoning_tokens: int = 0  # of the output, reported as reasoning (at most the output)
    break_streams: int = 0  # cut this many next streams off halfway, before any usage is sent
    require_key: str | None = None  # when set, any other bearer / x-api-key gets 401 naming it
    inference_geo: str = "global"  # Anthropic: where calls that do not ask run (a workspace's default_inference_geo)
    summary_tokens: int = 20  # Anthropic threshold compaction: the summary's length (at most max_tokens)
    image_tokens: int = 1000  # each image in the input (any API's image part) counts this many input tokens
    image_tokens_low: int = 100  # an OpenAI image at "detail": "low"
    served_model: str | None = None  # answers name this model, whatever was asked (as an Azure deployment does)


def answer_model(data: dict[str, Any], config: SimConfig, default: str = "sim-model") -> str:
    """The model an answer names: the --served-model knob, else the one asked for."""
    return config.served_model or str(data.get("model") or default)


MAX_STORED_RESPONSES = 10_000  # the oldest is forgotten first


@dataclass
class Sim:
    config: SimConfig = field(default_factory=SimConfig)
    requests: list[dict[str, Any]] = field(default_factory=list)  # the last 200
    answered: dict[int, int] = field(default_factory=dict)  # status -> count, since start
    # Responses: the tokens each stored response leaves in its conversation (input + output), which a call naming
    # it as previous_response_id reads again, as the real API does
    contexts: dict[str, int] = field(default_factory=dict)


SIM = web.AppKey("sim", Sim)


def count_words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(count_words(v) for v in value)
    if isinstance(value, dict):
        return sum(count_words(v) for k, v in value.items() if k in ("content", "text", "input", "messages", "system"))
    return 0


def openai_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"type": code, "code": code, "message": message}}
    return web.json_response(body, status=status, headers=headers)


async def gate(request: web.Request) -> tuple[dict[str, Any], web.Response | None]:
    """Record the request and apply the failure knobs."""
    sim = request.app[SIM]
    raw = await request.read()
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return {}, openai_error(400, "invalid_request_error", "malformed JSON")
    sim.requests.append({"method": request.method, "path": request.path_qs, "headers": dict(request.headers),
                         "body": data, "time": time.time()})
    del sim.requests[:-200]
    config = sim.config
    if config.latency_ms:
        await asyncio.sleep(config.latency_ms / 1000)
    key = request.headers.get("x-api-key") or request.headers.get("Authorization", "").removeprefix("Bearer ")
    if config.require_key is not None and key != config.require_key:
        return data, openai_error(401, "invalid_api_key", f"Incorrect API key provided: {key}")
    if config.rate_limit > 0:
        config.rate_limit -= 1
        return data, openai_error(429, "rate_limit_exceeded", "Rate limit reached",
                                  {"Retry-After": str(config.retry_after)})
    if config.fail > 0:
        config.fail -= 1
        return data, openai_error(config.fail_status, "server_error" if config.fail_status >= 500
                                  else "invalid_request_error", f"simulated {config.fail_status}")
    return data, None


IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})


def image_tokens(value: Any, config: SimConfig) -> int:
    """What the images anywhere in a request cost: image_tokens each (image_tokens_low at OpenAI's low detail)."""
    if isinstance(value, list):
        return sum(image_tokens(v, config) for v in value)
    if not isinstance(value, dict):
        return 0
    tokens = sum(image_tokens(v, config) for v in value.values())
    if value.get("type") in IMAGE_PARTS:
        inner = value.get("image_url")
        low = (inner.get("detail") if isinstance(inner, dict) else value.get("detail")) == "low"
        tokens += config.image_tokens_low if low else config.image_tokens
    for key in ("inlineData", "inline_data", "fileData", "file_data"):  # Gemini's media parts
        media = value.get(key)
        if isinstance(media, dict) and str(media.get("mimeType", media.get("mime_type", ""))).startswith("image/"):
            tokens += config.image_tokens
    return tokens


def usage_numbers(data: dict[str, Any], config: SimConfig) -> tuple[int, int]:
    prompt = max(1, count_words(data.get("messages") or data.get("input") or []) + count_words(data.get("system"))
                 + image_tokens(data, config))
    limit = data.get("max_tokens") or data.get("max_completion_tokens") or data.get("max_output_tokens")
    completion = min(config.output_tokens, int(limit)) if limit else config.output_tokens
    return prompt, max(1, completion)


def take_break(config: SimConfig) -> bool:
    """Whether this stream is one to cut off halfway."""
    if config.break_streams > 0:
        config.break_streams -= 1
        return True
    return False


async def cut(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """End a stream abruptly: close the connection with no terminating chunk."""
    if request.transport is not None:
        request.transport.close()
    return response


def words(n: int) -> list[str]:
    return [f"tok{i}" for i in range(n)]


async def sim_redirect(request: web.Request) -> web.Response:
    """Answer with a redirect to ``?to=`` (to show a proxy does not follow it with a key)."""
    raise web.HTTPFound(request.query.get("to", "/"))


async def sim_requests(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM].requests)


async def sim_stats(request: web.Request) -> web.Response:
    """How many API calls were answered, by status, since the simulator started."""
    answered = request.app[SIM].answered
    return web.json_response({"requests": sum(answered.values()), "by_status": answered})


@web.middleware
async def count(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    if request.path.startswith("/v1/"):
        answered = request.app[SIM].answered
        answered[response.status] = answered.get(response.status, 0) + 1
    return response


async def sim_config(request: web.Request) -> web.Response:
    sim = request.app[SIM]
    if request.method == "POST":
        sim.config = SimConfig(**{**asdict(sim.config), **(await request.json())})
    return web.json_response(asdict(sim.config))


