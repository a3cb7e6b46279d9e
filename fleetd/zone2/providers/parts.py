"""Content parts and tools of the OpenAI and Anthropic request shapes, which their APIs share. Pure, no I/O.

Vendors copy each other's shapes (OpenAI-compatible endpoints of Anthropic and Gemini, Anthropic-compatible ones
of others), so every part type of either is looked for in every body of the three, at any depth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleetd.zone2.llm import Media, walk

# Image parts: billed by pixels (each up to the model's price's image_tokens), whatever their size in the body.
IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image", "computer_screenshot"})
# Parts and input items whose whole content is in the body, so that its bytes bound their tokens. In a content list or
# a Responses input list, a part of any other type (a video, a new media kind, another tool's stored result) is taken
# as input no bound follows for: default-deny, as for endpoints.
SIZED_PART_TYPES = frozenset({
    # OpenAI chat content parts; Responses content parts and input items
    "text", "input_text", "output_text", "refusal", "summary_text", "reasoning_text", "message", "reasoning",
    "computer_call_output",  # its output is a screenshot: an image
    "function_call", "function_call_output", "custom_tool_call", "custom_tool_call_output", "computer_call",
    "local_shell_call", "local_shell_call_output", "shell_call", "shell_call_output", "apply_patch_call",
    "apply_patch_call_output", "mcp_list_tools", "mcp_approval_request", "mcp_approval_response", "mcp_call",
    "compaction_trigger",
    # Anthropic content blocks
    "tool_use", "tool_result", "thinking", "redacted_thinking", "search_result",
})
# Anywhere in a body: input read from a cache kept upstream (Gemini's OpenAI-compatible chat: extra_body.google)
CACHED_CONTENT_KEYS = frozenset({"cached_content", "cachedContent"})
# Parts no bound follows for: files and documents (a PDF is billed by its pages, each page's text and image, whether
# given inline, by URL or by file id) and audio (by its length: compressed silence is a few bytes a minute). A
# "document" whose source is text or content blocks holds its text in the body and is sized by it.
UNSIZED_PART_TYPES = frozenset({"document", "file", "input_file", "input_audio"})
SIZED_DOCUMENT_SOURCES = frozenset({"text", "content"})
# Input items a Responses call names by id: their content is read from upstream storage (an item reference, a
# reasoning item without its encrypted_content), or expanded there (a compaction item's encrypted summary).
STORED_ITEM_TYPES = frozenset({"item_reference", "compaction"})

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


@dataclass(frozen=True)
class Scan:
    media: Media
    one_hour_cache: bool  # a ``cache_control`` asks for a 1-hour TTL (``{"type": "ephemeral", "ttl": "1h"}``)
    stored_items: bool  # an input item read from upstream storage (STORED_ITEM_TYPES, or a bare {"id": ...})


def scan(data: dict[str, Any]) -> Scan:
    """What the reservation needs to know of a request's parts: images anywhere, parts of unknown or unsized kinds
    where content goes, a 1-hour cache anywhere."""
    images = images_low = 0
    unsized = one_hour = False
    for item in walk(data):
        kind = item.get("type")
        if isinstance(kind, str):
            if kind in IMAGE_PART_TYPES:
                if _detail(item) == "low":
                    images_low += 1
                else:
                    images += 1
            elif kind in UNSIZED_PART_TYPES and not _sized_document(item):
                unsized = True
        if not unsized and not item.keys().isdisjoint(CACHED_CONTENT_KEYS):
            unsized = True
        control = item.get("cache_control")
        if isinstance(control, dict) and control.get("ttl") == "1h":
            one_hour = True
    unsized = unsized or any(_unknown(part) for part in content_parts(data))
    return Scan(Media(images=images, images_low=images_low, unsized=unsized), one_hour, _stored_items(data))


def _unknown(part: dict[str, Any]) -> bool:
    kind = part.get("type")
    if kind is None:  # a chat message or a Responses message without its optional type
        return not ({"role", "content"} & part.keys()) and "id" not in part
    return not isinstance(kind, str) or not (kind in SIZED_PART_TYPES or kind in IMAGE_PART_TYPES
                                              or kind in UNSIZED_PART_TYPES)


def content_parts(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The objects where content goes: the parts of each message's content, the items of a Responses input, the
    parts of their content and output, Anthropic's system blocks, a tool result's content, at any nesting."""
    found: list[dict[str, Any]] = []
    lists: list[object] = [data.get("input"), data.get("system")]
    messages = data.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, dict):
            lists.append(message.get("content"))
    while lists:
        items = lists.pop()
        for item in items if isinstance(items, list) else ():
            if not isinstance(item, dict):
                continue
            found.append(item)
            lists.append(item.get("content"))
            output = item.get("output")
            lists.append([output] if isinstance(output, dict) else output)
    return found


def _detail(part: dict[str, Any]) -> object:
    """An image part's detail: Responses puts it on the part, Chat in its image_url object."""
    inner = part.get("image_url")
    return inner.get("detail") if isinstance(inner, dict) else part.get("detail")


def _sized_document(part: dict[str, Any]) -> bool:
    """An Anthropic document whose text is in the body (``source`` of type text or content)."""
    source = part.get("source")
    return part.get("type") == "document" and isinstance(source, dict) and source.get("type") in SIZED_DOCUMENT_SOURCES


def _stored_items(data: dict[str, Any]) -> bool:
    """A Responses ``input`` item whose content is kept upstream: an item reference (its ``type`` is optional, so
    also an item with an ``id`` and nothing else of an item), a compaction item, or a reasoning item without its
    encrypted_content (read back by id)."""
    items = data.get("input")
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind in STORED_ITEM_TYPES or (kind is None and "id" in item and not ({"role", "content"} & set(item))):
            return True
        if kind == "reasoning" and not item.get("encrypted_content"):
            return True
    return False


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
