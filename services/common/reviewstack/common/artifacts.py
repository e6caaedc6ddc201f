"""The reference to a stored object that every artifact and RPC carries."""

from __future__ import annotations

from dataclasses import dataclass

from reviewstack.v1 import common_pb2


@dataclass(frozen=True)
class ArtifactRef:
    """A stored object: its key inside the store, full URI, content hash and size."""

    key: str
    uri: str
    sha256: str
    size: int

    def to_pb(self) -> common_pb2.ArtifactRef:
        return common_pb2.ArtifactRef(uri=self.uri, sha256=self.sha256, size=self.size)

    def to_json(self) -> dict[str, object]:
        return {"uri": self.uri, "sha256": self.sha256, "size": self.size}
