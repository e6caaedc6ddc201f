"""StoreScope: what a request may name resolves inside the configured store (or a read-only root) or is
refused — on a local directory and on a real S3 bucket alike."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reviewstack.common.errors import InvalidArgument, PermissionDenied
from reviewstack.common.store import open_store
from reviewstack.common.store.scope import StoreScope, for_server


@pytest.fixture
def local(tmp_path: Path) -> StoreScope:
    (tmp_path / "store").mkdir()
    (tmp_path / "raw").mkdir()
    return StoreScope(open_store(str(tmp_path / "store")), [open_store(str(tmp_path / "raw"))])


def test_keys_and_locations_inside_the_local_store_resolve(local: StoreScope, tmp_path: Path) -> None:
    root = tmp_path / "store"
    assert local.key("datasets/x/v1", what="dataset") == "datasets/x/v1"
    for ref in (str(root / "datasets/x/v1"), f"file://{root}/datasets/x/v1", f"{root}/datasets/x/v1/"):
        assert local.key(ref, what="dataset") == "datasets/x/v1"
    assert local.key(str(root), what="output") == ""
    assert local.location("reviews/ours", what="system") == local.store.uri_for("reviews/ours")
    assert local.location(str(tmp_path / "raw" / "papers"), what="source").endswith("/raw/papers")


@pytest.mark.parametrize(
    "ref",
    ["/etc", "/etc/passwd", "file:///etc", "s3://bucket/store", "http://10.0.0.1/x", "~", "../elsewhere"],
)
def test_anything_else_is_permission_denied(local: StoreScope, ref: str) -> None:
    with pytest.raises(PermissionDenied) as caught:
        local.location(ref, what="source")
    assert "outside" in str(caught.value) and repr(ref) in str(caught.value)


def test_a_sibling_with_the_stores_name_as_prefix_is_not_inside(local: StoreScope, tmp_path: Path) -> None:
    """A string-prefix check would let `<store>2/...` through; the scope compares whole segments."""
    (tmp_path / "store2").mkdir()
    with pytest.raises(PermissionDenied):
        local.key(str(tmp_path / "store2" / "x"), what="output")
    with pytest.raises(PermissionDenied):
        local.key(f"{local.store.uri}2/x", what="output")


def test_read_only_roots_are_readable_not_writable(local: StoreScope, tmp_path: Path) -> None:
    raw = str(tmp_path / "raw" / "batch")
    assert local.location(raw, what="source")
    with pytest.raises(PermissionDenied) as caught:
        local.location(raw, what="output", write=True)
    assert "may write" in str(caught.value)
    with pytest.raises(PermissionDenied) as caught:
        local.key(raw, what="paper")  # the store's keys only; read-only roots have none
    assert "may read" in str(caught.value)


def test_symlinks_that_lead_out_are_refused(local: StoreScope, tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "reviews").mkdir()
    os.symlink("/usr", root / "reviews" / "out", target_is_directory=True)
    with pytest.raises(PermissionDenied):
        local.key("reviews/out/share", what="system")  # as a key
    with pytest.raises(PermissionDenied):
        local.key(str(root / "reviews" / "out"), what="system")  # as a path


@pytest.mark.parametrize("ref", ["", "  ", "a/../b", "a//b", ".reviewstack/meta/x", "a\x00b", "s3://b/x?y=1"])
def test_malformed_references_are_invalid(local: StoreScope, ref: str) -> None:
    with pytest.raises(InvalidArgument):
        local.key(ref, what="dataset")


def test_s3_locations_must_be_in_the_bucket_and_under_its_prefix(s3_server) -> None:
    scope = StoreScope(open_store("s3://scope-test/store", s3_server.settings()))
    assert scope.key("s3://scope-test/store/datasets/x", what="dataset") == "datasets/x"
    assert scope.key("s3://scope-test/store", what="output") == ""
    assert scope.key("datasets/x", what="dataset") == "datasets/x"
    for ref in ("s3://scope-test/store2/x", "s3://scope-test/x", "s3://other/store/x", "/tmp/x", "file:///x"):
        with pytest.raises(PermissionDenied):
            scope.key(ref, what="output")
    with pytest.raises(InvalidArgument):
        scope.key("s3://scope-test/store/a/../b", what="output")


def test_the_cli_sends_existing_local_paths_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").mkdir()
    assert for_server("here") == str(tmp_path / "here")
    assert for_server("datasets/x/v1") == "datasets/x/v1"  # not a local path: a key for the server
    assert for_server("s3://b/x") == "s3://b/x"
    assert for_server("") == ""
