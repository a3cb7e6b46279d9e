"""A local OpenAI/Anthropic-compatible LLM simulator, for demos and offline tests.

``fleetd llm-sim --port 8000`` serves:

- ``POST /v1/chat/completions`` (OpenAI; ``stream`` with ``stream_options.include_usage``)
- ``POST /v1/responses`` (OpenAI Responses API; ``stream`` ends with ``response.completed``; a
  ``previous_response_id`` adds that response's input and output tokens to the input, as upstream state)
- ``POST /v1/messages`` (Anthropic; ``stream`` with message_start/message_delta usage)
- ``POST /v1/embeddings`` (OpenAI; floats or ``encoding_format: "base64"``; input tokens = words, or the
  length of a token list), also at Azure OpenAI's ``/openai/deployments/NAME/embeddings``
- ``POST /v1beta/models/MODEL:generateContent`` and ``:streamGenerateContent`` (Gemini; with ``?alt=sse`` a stream
  of events, without it a JSON array written piece by piece; ``usageMetadata`` with thoughts), also at Vertex AI's
  ``/v1/projects/P/locations/L/publishers/google/models/MODEL:generateContent``
- ``GET /v1/models``

Token counts are deterministic: input = words in the request's messages, plus
``--image-tokens`` per image, output = ``max_tokens`` (or ``--output-tokens``) capped. Knobs for testing
agents' behaviour: ``--latency-ms``, ``--chunk-delay-ms``, ``--rate-limit N``
(answer the next N calls with 429 + Retry-After), ``--fail N`` (500s). The same
knobs can be changed at run time with ``POST /sim/config``, and
``GET /sim/requests`` shows the requests seen (headers included: the point is
to show that a real key arrived here and nowhere else).
"""

from __future__ import annotations

from aiohttp import web

from fleetd.llmsim.anthropic import messages
from fleetd.llmsim.core import SIM, Sim, SimConfig, count, sim_config, sim_redirect, sim_requests, sim_stats
from fleetd.llmsim.gemini import generate
from fleetd.llmsim.openai import chat_completions, embeddings, models, responses

__all__ = ["SIM", "Sim", "SimConfig", "init_sim", "run"]


def init_sim(config: SimConfig | None = None) -> web.Application:
    app = web.Application(client_max_size=16 << 20, middlewares=[count])
    app[SIM] = Sim(config or SimConfig())
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/openai/deployments/{deployment}/embeddings", embeddings)  # Azure OpenAI's path
    app.router.add_post("/{version}/models/{call}", generate)  # Gemini API: models/MODEL:generateContent
    app.router.add_post("/{version}/projects/{project}/locations/{location}/publishers/google/models/{call}",
                        generate)  # Vertex AI
    app.router.add_get("/v1/models", models)
    app.router.add_get("/sim/requests", sim_requests)
    app.router.add_get("/sim/stats", sim_stats)
    app.router.add_route("*", "/sim/redirect", sim_redirect)
    app.router.add_get("/sim/config", sim_config)
    app.router.add_post("/sim/config", sim_config)
    return app


def run(host: str, port: int, config: SimConfig) -> None:
    web.run_app(init_sim(config), host=host, port=port, access_log=None, print=None)
