"""LLM endpoints are the operator's: named in settings with their keys, picked by name, never by URL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from reviewstack.common.errors import FailedPrecondition, InvalidArgument, NotFound
from reviewstack.common.llm_endpoints import LLMEndpoint, pick_endpoint
from reviewstack.common.settings import LLMEndpointSettings


def test_settings_read_the_table_from_the_environment(monkeypatch, tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("sk-1\n")
    table = {"gpt4": {"url": "https://api.example.org/v1/", "model": "gpt-4o", "api_key_file": str(key)}}
    monkeypatch.setenv("REVIEWSTACK_LLM_ENDPOINTS", json.dumps(table))
    endpoints = LLMEndpointSettings().llm_endpoints
    assert endpoints["gpt4"].url == "https://api.example.org/v1" and endpoints["gpt4"].api_key() == "sk-1"
    key.write_text("sk-2")  # a rotated Secret is read at the next use
    assert endpoints["gpt4"].api_key() == "sk-2"


@pytest.mark.parametrize(
    "table",
    [
        {"Bad Name": {"url": "http://x/v1", "model": "m"}},
        {"a": {"url": "ftp://x/v1", "model": "m"}},
        {"a": {"url": "http://x/v1?key=1", "model": "m"}},
        {"a": {"url": "http://x/v1", "model": ""}},
        {"a": {"url": "http://x/v1", "model": "m", "api_key_file": "/k", "api_key_env": "K"}},
        {"a": {"url": "http://x/v1", "model": "m", "headers": {"x": "y"}}},
    ],
)
def test_a_bad_table_is_refused_at_start(monkeypatch, table) -> None:
    monkeypatch.setenv("REVIEWSTACK_LLM_ENDPOINTS", json.dumps(table))
    with pytest.raises(ValidationError):
        LLMEndpointSettings()


def test_requests_pick_by_name_only() -> None:
    endpoints = {"judge": LLMEndpoint(url="http://vllm:8000/v1", model="judge-70b")}
    assert pick_endpoint(endpoints, "judge").model == "judge-70b"
    assert pick_endpoint(endpoints, "", default="judge").model == "judge-70b"
    with pytest.raises(InvalidArgument, match="looks like a URL"):
        pick_endpoint(endpoints, "http://attacker.example/v1")
    with pytest.raises(NotFound, match="configured: judge"):
        pick_endpoint(endpoints, "other")
    with pytest.raises(InvalidArgument, match="name the judge"):
        pick_endpoint(endpoints, "", what="judge")


def test_keys_come_from_their_source_and_never_from_the_url(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JUDGE_KEY", "sk-env")
    assert LLMEndpoint(url="http://x/v1", model="m", api_key_env="JUDGE_KEY").api_key() == "sk-env"
    assert LLMEndpoint(url="http://x/v1", model="m").api_key() is None
    missing = LLMEndpoint(url="http://x/v1", model="m", api_key_file=tmp_path / "absent")
    with pytest.raises(FailedPrecondition, match="Secret"):
        missing.api_key()
    assert LLMEndpoint(url="https://u:p@x/v1", model="m").public_url == "https://x/v1"
