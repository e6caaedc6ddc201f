"""The DataPrep service as users run it: the `reviewstack-dataprep` process with auth on and an S3
store (a real S3 protocol server), driven by real gRPC clients and by the CLI's --server mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reviewstack.common.grpc import make_channel, wait_operation
from reviewstack.common.store import open_store
from reviewstack.v1 import dataprep_pb2, dataprep_pb2_grpc, operations_pb2

from ..conftest import service_process
from .conftest import SAMPLE, copy_papers, sample_ids
from .test_distill_llm import GOOD, _Endpoint

TOKEN = "test-token-123"
BIN = Path(sys.executable).parent


LLM_KEY = "sk-distiller-key-from-a-secret"


@pytest.fixture(scope="module")
def llm_endpoint():
    """An OpenAI-compatible endpoint the operator configured under the name "stub", key in a file."""
    endpoint = _Endpoint([GOOD])
    yield endpoint
    endpoint.close()


@pytest.fixture(scope="module")
def server(s3_server, tmp_path_factory, llm_endpoint):
    store = "s3://dataprep-test/store"
    log = tmp_path_factory.mktemp("dataprep") / "server.log"
    # raw inputs may come from the bundled sample and from the tests' own temp folders, nowhere else
    roots = [str(SAMPLE.parent), str(tmp_path_factory.getbasetemp())]
    key_file = tmp_path_factory.mktemp("secrets") / "api-key"
    key_file.write_text(LLM_KEY + "\n")
    endpoints = {"stub": {"url": llm_endpoint.url, "model": "distiller-7b", "api_key_file": str(key_file)}}
    env = {
        **os.environ,
        "REVIEWSTACK_LLM_ENDPOINTS": json.dumps(endpoints),
        **s3_server.env(),
        "REVIEWSTACK_STORE": store,
        "REVIEWSTACK_READ_ONLY_ROOTS": json.dumps(roots),
        "REVIEWSTACK_AUTH_TOKEN": TOKEN,
        "REVIEWSTACK_LOG_FORMAT": "json",
    }
    # SERVING only once the tokenizer and the embedding model are loaded
    with service_process("reviewstack-dataprep", "reviewstack.v1.DataPrep", env, log) as target:
        yield {"target": target, "store": open_store(store, s3_server.settings()), "log": log, "env": env}


def _stub(target: str, token: str | None = TOKEN):
    channel = make_channel(target, token)
    return channel, dataprep_pb2_grpc.DataPrepStub(channel)


def _request(sources, **fields) -> dataprep_pb2.BuildDatasetRequest:
    return dataprep_pb2.BuildDatasetRequest(
        sources=[str(s) for s in sources], paper_version=dataprep_pb2.PAPER_VERSION_MODE_DECISION, **fields
    )


def test_health_is_open_and_calls_need_the_token(server):
    channel = grpc.insecure_channel(server["target"])
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    for token in (None, "wrong"):
        _, stub = _stub(server["target"], token)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListDatasets(dataprep_pb2.ListDatasetsRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_build_over_the_sample_through_the_service(server):
    channel, stub = _stub(server["target"])
    operation = stub.BuildDataset(_request([SAMPLE], name="sample", request_id="build-1"), timeout=60)
    assert operation.state in (operations_pb2.OPERATION_STATE_PENDING, operations_pb2.OPERATION_STATE_RUNNING)
    again = stub.BuildDataset(_request([SAMPLE], name="sample", request_id="build-1"), timeout=60)
    assert again.id == operation.id  # idempotent on the client's request id
    stages = []
    final = wait_operation(
        channel, operation.id, on_update=lambda op: stages.append(op.progress.stage), timeout=600
    )
    assert final.state == operations_pb2.OPERATION_STATE_SUCCEEDED, final.error.message
    assert {"reading", "distilling", "tokenizing", "writing"} <= set(stages)
    result = dataprep_pb2.BuildDatasetResult()
    assert final.result.Unpack(result)
    assert sum(result.split_counts.values()) == 30 and not result.skipped
    assert result.manifest.uri.startswith("s3://dataprep-test/store/datasets/sample/")
    store = server["store"]
    prefix = f"datasets/sample/{result.version}"
    manifest = store.read_manifest(prefix)
    assert manifest["counts"]["records"] == 30
    assert store.stat(f"{prefix}/manifest.json").sha256 == result.manifest.sha256
    listed = stub.ListDatasets(dataprep_pb2.ListDatasetsRequest(), timeout=30).datasets
    assert [(d.name, d.version) for d in listed] == [("sample", result.version)]
    shown = stub.GetDataset(dataprep_pb2.GetDatasetRequest(name="sample", version=result.version), timeout=30)
    assert json.loads(shown.manifest_json)["version"] == result.version


def test_bad_inputs_are_reported_in_the_operation_result(server, tmp_path):
    source = copy_papers(tmp_path / "src", sample_ids()[:2])
    (source / "reviews" / "broken.json").write_text("{not json")
    (source / "papers" / "broken.md").write_text("# T\n\ntext")
    (source / "papers" / "orphan.md").write_text("# T\n\ntext")
    channel, stub = _stub(server["target"])
    operation = stub.BuildDataset(_request([source], name="bad"), timeout=60)
    final = wait_operation(channel, operation.id, timeout=600)
    assert final.state == operations_pb2.OPERATION_STATE_SUCCEEDED, final.error.message
    result = dataprep_pb2.BuildDatasetResult()
    final.result.Unpack(result)
    reasons = {s.path: s.reason for s in result.skipped}
    assert reasons["papers/orphan.md"] == "paper without reviews"
    assert reasons["reviews/broken.json"].startswith("malformed review file")
    assert sum(result.split_counts.values()) == 2


@pytest.mark.parametrize(
    "request_fields, code, message",
    [
        (
            {"sources": [str(SAMPLE.parent / "nonexistent")], "name": "x"},
            grpc.StatusCode.NOT_FOUND,
            "does not exist",
        ),
        ({"sources": [str(SAMPLE)], "name": "Bad Name"}, grpc.StatusCode.INVALID_ARGUMENT, "name"),
        (
            {"sources": [str(SAMPLE)], "name": "x", "paper_version": 0},
            grpc.StatusCode.INVALID_ARGUMENT,
            "paper_version is required",
        ),
        (
            {"sources": [str(SAMPLE)], "name": "x", "split": dataprep_pb2.SplitSpec(train=float("nan"))},
            grpc.StatusCode.INVALID_ARGUMENT,
            "finite",
        ),
        (
            {"sources": [str(SAMPLE)] * 65, "name": "x"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "at most 64 (REVIEWSTACK_MAX_SOURCES)",
        ),
    ],
)
def test_bad_requests_fail_in_the_rpc_before_any_work(server, request_fields, code, message):
    _, stub = _stub(server["target"])
    fields = {"paper_version": dataprep_pb2.PAPER_VERSION_MODE_LATE, **request_fields}
    with pytest.raises(grpc.RpcError) as info:
        stub.BuildDataset(dataprep_pb2.BuildDatasetRequest(**fields), timeout=60)
    assert info.value.code() == code
    assert message in info.value.details()
    assert "Traceback" not in info.value.details()


def test_cli_server_mode_builds_and_prints_the_summary(server, tmp_path):
    source = copy_papers(tmp_path / "src", sample_ids()[:3])
    env = {**server["env"], "REVIEWSTACK_TOKEN": TOKEN}
    run = subprocess.run(
        [
            str(BIN / "reviewstack"),
            "data",
            "build",
            "--server",
            server["target"],
            "--source",
            str(source),
            "--paper-version",
            "late",
            "--out",
            "s3://dataprep-test/store/cli",
            "--name",
            "cli",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["counts"]["records"] == 3
    assert summary["manifest"].startswith("s3://dataprep-test/store/cli/datasets/cli/")


# -- what a request may point the server at ----------------------------------------------------------
@pytest.mark.parametrize(
    "fields, words",
    [
        ({"sources": ["/etc"]}, "sources[0] '/etc' is outside"),
        ({"sources": ["s3://another-bucket/raw"]}, "outside"),
        ({"sources": ["file:///usr/share"]}, "outside"),
        ({"sources": [str(SAMPLE), "../../etc"]}, "sources[1]"),
        ({"output": "s3://another-bucket/store"}, "output"),
        ({"output": "s3://dataprep-test/store2"}, "outside"),  # a sibling prefix is not inside
        ({"output": "/tmp/elsewhere"}, "outside"),
    ],
)
def test_a_request_cannot_name_a_place_outside_the_store(server, fields, words):
    _, stub = _stub(server["target"])
    request = _request([SAMPLE], name="escape", **{k: v for k, v in fields.items() if k != "sources"})
    if "sources" in fields:
        del request.sources[:]
        request.sources.extend(fields["sources"])
    with pytest.raises(grpc.RpcError) as info:
        stub.BuildDataset(request, timeout=60)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value.details()
    assert words in info.value.details()


def test_a_symlink_out_of_a_read_only_root_is_refused(server, tmp_path):
    escape = tmp_path / "escape"
    escape.symlink_to("/usr/share", target_is_directory=True)
    _, stub = _stub(server["target"])
    with pytest.raises(grpc.RpcError) as info:
        stub.BuildDataset(_request([escape], name="escape"), timeout=60)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_listing_and_reading_stay_in_the_store(server, tmp_path):
    """GetDataset(store=...) once read a manifest from anywhere and wrote hash records there."""
    elsewhere = tmp_path / "other-store"
    other = open_store(str(elsewhere))
    with other.publish("datasets/x/v1") as pub:
        pub.put_bytes("train.jsonl", b"{}\n")
        pub.manifest.update({"kind": "dataset", "name": "x", "version": "v1"})
    before = sorted(p.relative_to(elsewhere) for p in elsewhere.rglob("*"))
    _, stub = _stub(server["target"])
    for call in (
        lambda: stub.GetDataset(
            dataprep_pb2.GetDatasetRequest(store=str(elsewhere), name="x", version="v1"), timeout=30
        ),
        lambda: stub.ListDatasets(dataprep_pb2.ListDatasetsRequest(store=str(elsewhere)), timeout=30),
        lambda: stub.ListDatasets(dataprep_pb2.ListDatasetsRequest(store="s3://another-bucket"), timeout=30),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert sorted(p.relative_to(elsewhere) for p in elsewhere.rglob("*")) == before  # nothing written
    with pytest.raises(grpc.RpcError) as info:
        stub.GetDataset(dataprep_pb2.GetDatasetRequest(name="x/../..", version="v1"), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "distiller, tokenizer, code, words",
    [
        ("http://10.0.0.1:8000/v1", "", grpc.StatusCode.INVALID_ARGUMENT, "looks like a URL"),
        ("gpt-of-my-choosing", "", grpc.StatusCode.NOT_FOUND, "configured: stub"),
        (None, "/etc", grpc.StatusCode.INVALID_ARGUMENT, "looks like a path"),
        (None, "unknown", grpc.StatusCode.NOT_FOUND, "no tokenizer named"),
    ],
)
def test_endpoints_and_tokenizers_are_picked_by_name_only(server, distiller, tokenizer, code, words):
    _, stub = _stub(server["target"])
    request = _request([SAMPLE], name="named", tokenizer=tokenizer)
    if distiller is not None:
        request.distiller.kind = dataprep_pb2.DistillerSpec.KIND_LLM
        request.distiller.endpoint = distiller
    with pytest.raises(grpc.RpcError) as info:
        stub.BuildDataset(request, timeout=60)
    assert info.value.code() == code
    assert words in info.value.details()


def test_the_llm_distiller_calls_the_named_endpoint_with_its_own_key(server, llm_endpoint, tmp_path):
    source = copy_papers(tmp_path / "src", sample_ids()[:2])
    channel, stub = _stub(server["target"])
    request = _request([source], name="by-name")
    request.distiller.kind = dataprep_pb2.DistillerSpec.KIND_LLM
    request.distiller.endpoint = "stub"
    operation = stub.BuildDataset(request, timeout=60)
    final = wait_operation(channel, operation.id, timeout=600)
    assert final.state == operations_pb2.OPERATION_STATE_SUCCEEDED, final.error.message
    calls = [r for r in llm_endpoint.requests if r["body"]["model"] == "distiller-7b"]
    assert len(calls) == 2 and {c["auth"] for c in calls} == {f"Bearer {LLM_KEY}"}
    result = dataprep_pb2.BuildDatasetResult()
    final.result.Unpack(result)
    manifest = server["store"].read_manifest(f"datasets/by-name/{result.version}")
    assert LLM_KEY not in json.dumps(manifest)  # the key is never recorded
    assert manifest["distiller"]["model"] == "distiller-7b"
