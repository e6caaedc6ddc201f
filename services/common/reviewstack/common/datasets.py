"""Reading a published dataset's manifest: what the trainer and the Training service both check first."""

from __future__ import annotations

from typing import Any

from reviewstack.common.errors import InvalidArgument, NotFound
from reviewstack.common.settings import StoreSettings
from reviewstack.common.store import ArtifactStore, open_store


def open_dataset_store(
    uri: str, settings: StoreSettings | None = None
) -> tuple[ArtifactStore, dict[str, Any]]:
    """The store rooted at a dataset folder (<store>/datasets/<name>/<version>) and its manifest.

    NotFound (naming the URI) unless the folder is published; InvalidArgument when the manifest there
    is not a dataset's (a run or a report folder given by mistake)."""
    store = open_store(uri, settings)
    try:
        manifest = store.read_manifest("")
    except NotFound:
        raise NotFound(
            f"no published dataset at {uri} (no manifest.json): build it with `reviewstack data build`, "
            "or check the URI with `reviewstack data list`"
        ) from None
    if manifest.get("kind") != "dataset":
        raise InvalidArgument(
            f"{uri} holds a {manifest.get('kind') or 'non-dataset'} manifest, not a dataset"
        )
    return store, manifest
