"""Provider kinds of credentials: inference from the host, and which calls are free (fleetd.zone2.kinds)."""

from __future__ import annotations

import pytest

from fleetd.zone2.kinds import KINDS, UnknownKind, check_kind, free_call, infer_kind, is_llm


@pytest.mark.parametrize(("upstream", "kind"), [
    ("https://api.openai.com", "openai"),
    ("https://api.openai.com/v1", "openai"),
    ("https://api.mistral.ai", "openai"),
    ("https://openrouter.ai/api", "openai"),
    ("https://api.anthropic.com", "anthropic"),
    ("https://my-res.openai.azure.com", "azure-openai"),
    ("https://my-res.cognitiveservices.azure.com", "azure-openai"),
    ("https://generativelanguage.googleapis.com", "gemini"),
    ("https://us-central1-aiplatform.googleapis.com", "gemini"),
    ("https://bedrock-runtime.us-east-1.amazonaws.com", "bedrock"),
    ("https://s3.us-east-1.amazonaws.com", "generic"),
    ("https://api.search.brave.com", "generic"),
    ("http://127.0.0.1:8000", "generic"),
    ("https://api.openai.com.evil.example", "generic"),
    ("https://notapi.openai.com", "generic"),
])
def test_kind_is_inferred_from_the_host(upstream: str, kind: str) -> None:
    assert infer_kind(upstream) == kind


def test_kinds() -> None:
    assert [k for k in KINDS if not is_llm(k)] == ["generic"]
    assert check_kind("gemini") == "gemini"
    with pytest.raises(UnknownKind, match="one of"):
        check_kind("OpenAI")


@pytest.mark.parametrize(("method", "path", "free"), [
    ("GET", "/v1/models", True),
    ("HEAD", "/v1/models", True),
    ("DELETE", "/v1/responses/resp_1", True),
    ("POST", "/v1/messages/count_tokens", True),
    ("POST", "/v1/responses/input_tokens", True),
    ("POST", "/v1/responses/resp_1/cancel", True),
    ("POST", "/v1/files", True),
    ("POST", "/upload/v1beta/files", True),
    ("POST", "/v1beta/models/gemini-2.5-flash:countTokens", True),
    ("POST", "/v1beta/models/gemini-2.5-flash%3AcountTokens", True),
    ("POST", "/v1/images/generations", False),
    ("POST", "/v1/responses/compact", False),
    ("POST", "/v1/vector_stores", False),
    ("POST", "/openai/deployments/d/audio/speech", False),
    ("POST", "/model/anthropic.claude-v2/invoke", False),
    ("PUT", "/v1/files", False),
    ("PATCH", "/v1/x", False),
    ("POST", "/v1beta/models/gemini-2.5-flash:generateContent", False),
])
def test_free_calls(method: str, path: str, free: bool) -> None:
    assert free_call(method, path) is free
