"""Run identity as a gRPC client sees it: a `reviewstack-training` server (kubernetes launcher, S3 store,
no cluster to reach) answers ALREADY_EXISTS for another spec under an existing run id, and resumes the
run for the same spec — the store, not the server's memory, decides, so a second server agrees."""

from __future__ import annotations

import json

import grpc
import pytest

from reviewstack.common.store import open_store
from reviewstack.v1 import training_pb2

from .conftest import publish_dataset
from .test_service import _run_spec, _stubs, _watch_to_end, training_server


@pytest.fixture(scope="module")
def servers(s3_server, tmp_path_factory):
    """Two replicas of the Training server over one S3 store."""
    store_uri = "s3://identity-grpc/store"
    store = open_store(store_uri, s3_server.settings())
    dataset = publish_dataset(store)
    root = tmp_path_factory.mktemp("identity-grpc")
    env = {
        **s3_server.env(),
        "REVIEWSTACK_STORE": store_uri,
        "REVIEWSTACK_LAUNCHER": "kubernetes",
        "REVIEWSTACK_K8S_NAMESPACE": "training",
        "KUBECONFIG": str(root / "missing-config"),
    }
    with training_server(root / "a.log", env) as a, training_server(root / "b.log", env) as b:
        yield {"targets": (a, b), "store": store, "dataset": dataset}


def test_another_spec_under_a_run_id_is_already_exists_on_every_replica(servers):
    first, second = (_stubs(t)[0] for t in servers["targets"])
    spec = _run_spec(servers["dataset"], run_id="grpc-a")
    accepted = first.SubmitRun(training_pb2.SubmitRunRequest(spec=spec), timeout=30)
    _watch_to_end(first, accepted.run_id)  # fails: no cluster here; the run id and its spec remain
    written = servers["store"].get_bytes("runs/grpc-a/spec.json")

    other = _run_spec(servers["dataset"], run_id="grpc-a", learning_rate=3e-4)
    for stub in (first, second):
        with pytest.raises(grpc.RpcError) as refused:
            stub.SubmitRun(training_pb2.SubmitRunRequest(spec=other), timeout=30)
        assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
        details = refused.value.details()
        assert (
            "run grpc-a already exists" in details
            and "learning_rate: 0.0001 stored, 0.0003 submitted" in details
        )
        assert "another run_id" in details
    assert servers["store"].get_bytes("runs/grpc-a/spec.json") == written

    resumed = second.SubmitRun(training_pb2.SubmitRunRequest(spec=spec), timeout=30)  # the same spec
    assert resumed.run_id == "grpc-a" and resumed.operation.id
    _watch_to_end(second, "grpc-a")
    assert servers["store"].get_bytes("runs/grpc-a/spec.json") == written
    assert json.loads(written)["learning_rate"] == 1e-4
