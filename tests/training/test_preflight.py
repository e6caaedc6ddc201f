"""Bad input is refused before anything is launched, with an error that names what to fix."""

from __future__ import annotations

import pytest

from reviewstack.common.errors import FailedPrecondition, InvalidArgument, NotFound
from reviewstack.common.runspec import validate_train_spec
from reviewstack.common.settings import StoreSettings
from reviewstack.training.preflight import (
    check_cluster_run,
    check_dataset,
    check_local_hardware,
    check_output,
    visible_gpus,
)

from .conftest import publish_dataset, spec_data


def _spec(**fields):
    return validate_train_spec(spec_data("/d", "/o", **fields))


def test_a_published_dataset_passes(store, dataset):
    assert check_dataset(dataset, StoreSettings())["counts"]["train"] == 2


def test_an_unpublished_or_missing_dataset_is_not_found_with_its_uri(store):
    missing = store.uri_for("datasets/nope/v1")
    with pytest.raises(NotFound) as info:
        check_dataset(missing, StoreSettings())
    assert missing in str(info.value) and "reviewstack data build" in str(info.value)
    store.put_bytes("datasets/half/v1/train.jsonl", b"{}\n")  # a build that died before its manifest
    with pytest.raises(NotFound, match="no published dataset"):
        check_dataset(store.uri_for("datasets/half/v1"), StoreSettings())


def test_a_dataset_in_s3_is_read_through_the_store(s3_server, s3_store):
    uri = publish_dataset(s3_store)
    assert check_dataset(uri, s3_server.settings())["name"] == "tiny"
    with pytest.raises(NotFound, match=r"s3://.*/datasets/other/v1"):
        check_dataset(s3_store.uri_for("datasets/other/v1"), s3_server.settings())


def test_wrong_kind_or_empty_training_split(store):
    run = publish_dataset(store, name="x", kind="evaluation")
    with pytest.raises(InvalidArgument, match="evaluation manifest, not a dataset"):
        check_dataset(run, StoreSettings())
    empty = publish_dataset(store, name="empty", train=0)
    with pytest.raises(FailedPrecondition, match="no training records"):
        check_dataset(empty, StoreSettings())


def test_an_unwritable_output_fails_now(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(FailedPrecondition, match="cannot write"):
        check_output(str(tmp_path / "file" / "store"), StoreSettings())


def test_cuda_without_a_gpu_is_a_failed_precondition():
    with pytest.raises(FailedPrecondition, match="device=cuda but this machine has no GPU"):
        check_local_hardware(_spec(device="cuda"), gpus_requested=0, gpus_available=0, nodes=1)
    with pytest.raises(FailedPrecondition, match="asks for 4 GPUs but this machine offers 1"):
        check_local_hardware(_spec(), gpus_requested=4, gpus_available=1, nodes=1)
    with pytest.raises(InvalidArgument, match="2 nodes need the kubernetes launcher"):
        check_local_hardware(_spec(), gpus_requested=0, gpus_available=0, nodes=2)
    with pytest.raises(InvalidArgument, match="device=cpu but the run asks for 1 GPUs"):
        check_local_hardware(_spec(device="cpu"), gpus_requested=1, gpus_available=1, nodes=1)
    check_local_hardware(_spec(device="cuda"), gpus_requested=1, gpus_available=2, nodes=1)


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setattr("os.listdir", lambda path: ["nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "null"])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus() == 2
    for value, expected in (("", 0), ("-1", 0), ("1", 1), ("0,1,2", 2)):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
        assert visible_gpus() == expected, value


def test_a_cluster_run_reads_and_writes_through_s3():
    with pytest.raises(InvalidArgument, match="dataset '/d' is not an s3:// URI"):
        check_cluster_run(_spec(), 1)
    s3 = {"dataset": "s3://b/datasets/x/v1", "output": "s3://b"}
    with pytest.raises(FailedPrecondition, match="device=cuda but the run asks for 0 GPUs"):
        check_cluster_run(validate_train_spec({**spec_data("", ""), **s3, "device": "cuda"}), 0)
    check_cluster_run(validate_train_spec({**spec_data("", ""), **s3}), 8)


@pytest.mark.parametrize("what", ["layout=single", "method=qlora", "lora.trainable_tokens"])
def test_what_runs_as_one_process_is_refused_several_gpus_before_a_pod_starts(what):
    s3 = {"dataset": "s3://b/datasets/x/v1", "output": "s3://b"}
    fields = {"layout=single": {"layout": "single"}, "method=qlora": {"method": "qlora"},
              "lora.trainable_tokens": {"lora": {"trainable_tokens": ["<|eot_id|>"]}}}[what]  # fmt: skip
    spec = validate_train_spec({**spec_data("", ""), **s3, **fields})
    check_cluster_run(spec, 1)  # one GPU, one node: fine
    with pytest.raises(FailedPrecondition, match=f"{what} runs as one process but the run asks for 4 GPUs"):
        check_cluster_run(spec, 2, nodes=2)
