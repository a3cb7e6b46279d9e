"""OpenAI's usage shape, shared by its chat completions and Responses APIs. Pure, no I/O."""

from __future__ import annotations

from fleetd.zone2.llm import LLMRequest, Usage, count, detail, label
from fleetd.zone2.providers.base import Provider


def openai_usage(usage: object, prefix_in: str, prefix_out: str, tier: object) -> Usage | None:
    """Chat's (prompt/completion_tokens) and Responses' (input/output_tokens) usage objects.

    Cache reads (``cached_tokens``) and, from GPT-5.6 on, cache writes (``cache_write_tokens``, billed above the
    input price) are parts of the input count, as the details of it."""
    if not isinstance(usage, dict):
        return None
    details = f"{prefix_in}_tokens_details"
    cached = detail(usage, details, "cached_tokens")
    written = detail(usage, details, "cache_write_tokens")
    return Usage(
        input_tokens=max(count(usage.get(f"{prefix_in}_tokens")) - cached - written, 0),
        cached_input_tokens=cached,
        cache_write_tokens=written,
        output_tokens=count(usage.get(f"{prefix_out}_tokens")),
        reasoning_tokens=detail(usage, f"{prefix_out}_tokens_details", "reasoning_tokens"),
        service_tier=label(tier),
    )


def served_at_priority(llm: LLMRequest, usage: Usage | None) -> bool:
    """Priority processing is billed at the model's priority multiple: as the answer says, or as asked when it does
    not say (a project whose default tier is priority answers "priority" to calls that asked for none)."""
    if usage is not None and usage.service_tier is not None:
        return usage.service_tier == "priority"
    return llm.priority


class OpenAIShaped(Provider):
    """An API billed as OpenAI bills: at the priority multiple when the answer (or the request) says priority."""

    def served_at_priority(self, llm: LLMRequest, usage: Usage | None) -> bool:
        return served_at_priority(llm, usage)
