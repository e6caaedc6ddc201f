"""The LLM distiller against a minimal OpenAI-compatible endpoint started by the test.

What is under test is the protocol (request shape, model, temperature) and the parsing of the reply;
the endpoint returns fixed completions, as an LLM would.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from reviewstack.common.aspects import EMPTY_ASPECT, AspectSchema
from reviewstack.common.errors import InvalidArgument
from reviewstack.common.review_format import render
from reviewstack.dataprep.distill.llm import LLMDistiller
from reviewstack.dataprep.reviews import parse_review_record

GOOD = render(
    {"idea": ["Well motivated."], "rejection": ["Only two datasets."], "suggestions": ["Add an ablation."]}
)


class _Endpoint:
    def __init__(self, replies: list[str]) -> None:
        self.replies = replies
        self.requests: list[dict] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
                )
                content = endpoint.replies[min(len(endpoint.requests) - 1, len(endpoint.replies) - 1)]
                reply = {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": content},
                        }
                    ],
                }
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def endpoint(request):
    server = _Endpoint(request.param)
    yield server
    server.close()


def _paper(paper_id: str = "p1"):
    return parse_review_record(
        {
            "id": paper_id,
            "title": "T",
            "reviews": [
                {
                    "IS_META_REVIEW": False,
                    "comments": "SUMMARY:\nA method.\n\nSTRENGTHS AND WEAKNESSES:\n"
                    "Strengths:\n- Clear.\nWeaknesses:\n- Only two datasets.\n\n"
                    "QUESTIONS:\n- Why not an ablation?",
                }
            ],
        },
        source="test",
    )


@pytest.mark.parametrize("endpoint", [[GOOD]], indirect=True)
def test_llm_distiller_sends_the_versioned_prompt_and_parses_the_reply(endpoint, monkeypatch):
    monkeypatch.setenv("REVIEWSTACK_LLM_API_KEY", "k-123")
    distiller = LLMDistiller(endpoint.url, "gpt-4-1106-preview", AspectSchema.SEVEN)
    result = distiller.distill([_paper()], {})["p1"]
    assert result.error is None
    assert result.aspects["idea"] == ["Well motivated."]
    assert result.aspects["suggestions"] == ["Add an ablation."]
    assert result.aspects["experiments"] == []  # the empty marker means "nothing", not an item
    request = endpoint.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["auth"] == "Bearer k-123"
    assert request["body"]["model"] == "gpt-4-1106-preview" and request["body"]["temperature"] == 0.0
    system, user = request["body"]["messages"]
    assert "7. Other important review comments" in system["content"] and EMPTY_ASPECT in system["content"]
    assert "Only two datasets." in user["content"] and "Reviewer R1" in user["content"]
    assert distiller.describe()["version"] == "distill-v1"


@pytest.mark.parametrize("endpoint", [["I cannot help with that.", GOOD]], indirect=True)
def test_an_unparseable_reply_is_retried(endpoint):
    result = LLMDistiller(endpoint.url, "m").distill([_paper()], {})["p1"]
    assert result.error is None and len(endpoint.requests) == 2


@pytest.mark.parametrize("endpoint", [["no structure here"]], indirect=True)
def test_a_reply_that_stays_unparseable_is_the_papers_error(endpoint):
    result = LLMDistiller(endpoint.url, "m", attempts=2).distill([_paper()], {})["p1"]
    assert result.error and "unusable after 2 attempts" in result.error


def test_an_unreachable_endpoint_is_the_papers_error_not_a_crash():
    distiller = LLMDistiller("http://127.0.0.1:9/v1", "m", timeout_s=2)
    distiller._client = distiller._client.with_options(max_retries=0)
    result = distiller.distill([_paper()], {})["p1"]
    assert result.error and "127.0.0.1:9" in result.error


def test_missing_endpoint_or_model_is_refused():
    with pytest.raises(InvalidArgument, match="--llm-endpoint"):
        LLMDistiller("", "m")
