"""The web page against real services: the Review service on the tiny refusing model's engine, the
Evaluation service on a store holding one finished evaluation, and `reviewstack-web` itself as a
process on loopback, exactly as an operator starts it."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reviewstack.common.child_process import ChildProcess, free_port, http_ready
from reviewstack.common.store import open_store
from reviewstack.v1 import evaluation_pb2

from ..conftest import service_process
from ..evaluation.test_service import OURS, TRUTH, _evaluate
from ..evaluation.test_sources import publish_dataset, record

GRPC_TOKEN = "web-test-grpc-token"
LOGIN_TOKEN = "web-test-login-token-0123456789"
MAX_UPLOAD = 256 * 1024
SAMPLE_PAPERS = Path(__file__).resolve().parents[2] / "data" / "neurips2025-sample" / "papers"


@dataclass(frozen=True)
class WebPage:
    url: str
    store: Path
    eval_id: str
    log: Path


@pytest.fixture(scope="package")
def review_service(refuser_model: Path, refuser_engine: str, tmp_path_factory) -> Iterator[str]:
    """The Review service in front of the session's refuser engine (papers cut to 512 tokens)."""
    tmp = tmp_path_factory.mktemp("web-review")
    env = {
        **os.environ,
        "REVIEWSTACK_BACKEND_URL": refuser_engine,
        "REVIEWSTACK_TOKENIZER": str(refuser_model),
        "REVIEWSTACK_MAX_PROMPT_LENGTH": "512",
        "REVIEWSTACK_MAX_NEW_TOKENS": "450",
        "REVIEWSTACK_STORE": str(tmp / "store"),
        "REVIEWSTACK_AUTH_TOKEN": GRPC_TOKEN,
        "REVIEWSTACK_BACKEND_RETRIES": "0",
    }
    with service_process("reviewstack-review", "reviewstack.v1.Review", env, tmp / "review.log") as target:
        yield target


@pytest.fixture(scope="package")
def evaluated_store(tmp_path_factory) -> Iterator[tuple[Path, str, str]]:
    """A store with a ground-truth dataset, two systems' reviews and the Evaluation service on it, which
    has evaluated them once: (store folder, evaluation id, service target)."""
    root = tmp_path_factory.mktemp("web-store")
    store = open_store(str(root))
    publish_dataset(store, TRUTH)
    for system, extra in (("ours", {}), ("ours-l2", {"idea": ["The schedule idea is new."]})):
        for paper, aspects in OURS.items():
            store.put_bytes(
                f"reviews/{system}/{paper}.json", record(paper, {**aspects, **extra}, system=system)
            )
    env = {**os.environ, "REVIEWSTACK_STORE": str(root), "REVIEWSTACK_AUTH_TOKEN": GRPC_TOKEN}
    log = root.parent / f"{root.name}-evaluation.log"
    with service_process("reviewstack-evaluation", "reviewstack.v1.Evaluation", env, log) as target:
        request = evaluation_pb2.EvaluateRequest(
            systems=[
                evaluation_pb2.SystemRef(name=name, uri=f"reviews/{name}") for name in ("ours", "ours-l2")
            ],
            human=_dataset_key(root),
            bootstrap=50,
        )
        result = _evaluate(target, request, GRPC_TOKEN)
        yield root, result.eval_id, target


def _dataset_key(root: Path) -> str:
    manifest = next(root.glob("datasets/*/*/manifest.json"))
    return str(manifest.parent.relative_to(root))


def start_web(
    log: Path, store: Path, review_services: dict[str, object], evaluation: str = "", **extra: str
) -> ChildProcess:
    port = free_port()
    env = {
        **os.environ,
        "REVIEWSTACK_HOST": "127.0.0.1",
        "REVIEWSTACK_PORT": str(port),
        "REVIEWSTACK_STORE": str(store),
        "REVIEWSTACK_REVIEW_SERVICES": json.dumps(review_services),
        "REVIEWSTACK_EVALUATION_SERVICE": evaluation,
        "REVIEWSTACK_GRPC_TOKEN": GRPC_TOKEN,
        "REVIEWSTACK_LOGIN_TOKEN": LOGIN_TOKEN,
        "REVIEWSTACK_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
        **extra,
    }
    command = [str(Path(sys.executable).with_name("reviewstack-web"))]
    child = ChildProcess("reviewstack-web", command, log, env)
    url = f"http://127.0.0.1:{port}"
    child.wait_ready(http_ready(url, "/healthz"), 60)
    return child, url


@pytest.fixture(scope="package")
def web(review_service: str, evaluated_store, tmp_path_factory) -> Iterator[WebPage]:
    """The page: the refuser as system "refuser", a system whose Review service is down ("offline": a
    port nobody listens on), and the Evaluation service with one finished evaluation in the store."""
    store, eval_id, evaluation = evaluated_store
    log = tmp_path_factory.mktemp("web") / "web.log"
    services = {"refuser": review_service, "offline": f"127.0.0.1:{free_port()}"}
    child, url = start_web(log, store, services, evaluation)
    try:
        yield WebPage(url, store, eval_id, log)
    finally:
        assert child.stop(timeout_s=30) == 0, "SIGTERM must stop the page cleanly:\n" + log.read_text()
