"""A store client in a process of its own, driven by tests/common/test_store_concurrency.py.

    python store_worker.py publish URI PREFIX --content TAG [--start EPOCH] [pauses] [store options]
    python store_worker.py read URI STOPFILE PREFIX...        # polls manifests until STOPFILE exists
    python store_worker.py participate URI PREFIX WRITER NAME  # writes NAME into another's publication

`publish` prints one JSON line at the end: {"outcome": "published" | "reused" | "exists" | "error", ...};
progress lines before it (STAGED, MOVED, WROTE <name>) let a test kill it at a chosen point. An S3 store
takes its endpoint and keys from the REVIEWSTACK_S3_* environment, like every service.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from reviewstack.common.errors import AlreadyExists, NotFound, ReviewStackError
from reviewstack.common.logging import configure_logging
from reviewstack.common.settings import StoreSettings
from reviewstack.common.store import ArtifactStore, LocalStore
from reviewstack.common.store.s3 import S3Store

SMALL = 1 << 20  # files at most this big are read back whole by the reader


def dataset_files(tag: str, big: int = 0) -> dict[str, bytes]:
    """The files a writer publishes: the same for the same `tag`; each tag also has a file of its own
    name, so that a foreign file in a manifest is caught by name as well as by hash."""
    rng = random.Random(tag)
    files = {
        "train.jsonl": b"".join(b'{"row": %d, "w": "%s"}\n' % (i, tag.encode()) for i in range(2000)),
        "val.jsonl": rng.randbytes(50_000),
        f"only-{tag}.jsonl": tag.encode() * 100,
    }
    if big:
        files["big.bin"] = rng.randbytes(big)
    return files


def open_test_store(uri: str, options: argparse.Namespace | None = None, **kwargs: Any) -> ArtifactStore:
    """The store at `uri` with the protocol's timings (and S3 timeouts) set for a test."""
    opts = {**_options(options), **kwargs}
    if uri.startswith("s3://"):
        parts = urlsplit(uri)
        return S3Store(parts.netloc, parts.path.strip("/"), StoreSettings(), **opts)
    opts = {k: v for k, v in opts.items() if k in ("claim_wait_s", "staging_ttl_s")}
    return LocalStore(unquote(urlsplit(uri).path) if uri.startswith("file://") else uri, **opts)


def _options(options: argparse.Namespace | None) -> dict[str, Any]:
    if options is None:
        return {}
    names = ("claim_ttl_s", "claim_wait_s", "staging_ttl_s", "connect_timeout", "read_timeout", "retries")
    return {n: getattr(options, n) for n in names if getattr(options, n, None) is not None}


def say(line: str) -> None:
    print(line, flush=True)


def pause_after_moves(store: ArtifactStore, moves: int, seconds: float) -> None:
    """Fault injection: stop for `seconds` once `moves` staged files were moved into place."""
    original, done = store._move, []

    def move(src: str, dest: str, ref: Any) -> Any:
        result = original(src, dest, ref)
        done.append(dest)
        if len(done) == moves:
            say("MOVED")
            time.sleep(seconds)
        return result

    store._move = move  # type: ignore[method-assign]


def publish(args: argparse.Namespace) -> dict[str, Any]:
    store = open_test_store(args.uri, args)
    if args.pause_after_moves:
        pause_after_moves(store, args.pause_after_moves, args.pause_s)
    files = dataset_files(args.content, args.big)
    time.sleep(max(0.0, args.start - time.time()))  # racers start at the same instant
    with tempfile.TemporaryDirectory() as tmp, store.publish(args.prefix, wait_s=args.wait_s) as pub:
        for name, data in files.items():
            if len(data) > SMALL:  # big files stream from disk, as checkpoints and models do
                path = Path(tmp) / name
                path.write_bytes(data)
                pub.put_file(name, path)
            else:
                pub.put_bytes(name, data)
            say(f"WROTE {name}")
        pub.manifest["writer"] = args.content
        say("STAGED")
        time.sleep(args.pause_before_commit)
    assert pub.manifest_ref is not None
    return {"outcome": "reused" if pub.reused else "published", "manifest_sha256": pub.manifest_ref.sha256}


def read(args: argparse.Namespace) -> dict[str, Any]:
    """Poll like a reader would: every manifest it can read must list files that exist with its hashes."""
    store = open_test_store(args.uri, args)
    checks, seen, violations = 0, 0, []
    while not Path(args.stopfile).exists():
        for prefix in args.prefixes:
            violations += check_published(store, prefix)
            seen += store.is_published(prefix)
        checks += 1
    return {"checks": checks, "published_seen": seen, "violations": violations}


def check_published(store: ArtifactStore, prefix: str) -> list[str]:
    """What is wrong with the publication at `prefix` as a reader sees it now (nothing if unpublished)."""
    try:
        manifest = store.read_manifest(prefix)
    except NotFound:
        return []
    wrong = []
    for name, entry in manifest["files"].items():
        key = f"{prefix}/{name}"
        try:
            ref = store.stat(key)
            if ref.size <= SMALL:
                store.get_bytes(key)  # verifies the content against the recorded hash
        except ReviewStackError as exc:
            wrong.append(f"{key}: {exc}")
            continue
        if (ref.sha256, ref.size) != (entry["sha256"], entry["size"]):
            wrong.append(f"{key}: listed {entry}, stored {ref.sha256} {ref.size}")
    return wrong


def participate(args: argparse.Namespace) -> dict[str, Any]:
    store = open_test_store(args.uri, args)
    share = store.join_publication(args.prefix, args.writer)
    refs = [share.put_bytes(name, f"written by pid {os.getpid()}: {name}".encode()) for name in args.names]
    return {"outcome": "written", "refs": {r.key: r.sha256 for r in refs}}


def main() -> int:
    parser = argparse.ArgumentParser()
    for name in ("claim-ttl-s", "staging-ttl-s", "connect-timeout", "read-timeout"):
        parser.add_argument(f"--{name}", type=float)
    parser.add_argument("--retries", type=int)
    sub = parser.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish")
    pub.add_argument("uri")
    pub.add_argument("prefix")
    pub.add_argument("--content", required=True)
    pub.add_argument("--big", type=int, default=0)
    pub.add_argument("--start", type=float, default=0.0)
    pub.add_argument("--wait-s", type=float)
    pub.add_argument("--pause-before-commit", type=float, default=0.0)
    pub.add_argument("--pause-after-moves", type=int, default=0)
    pub.add_argument("--pause-s", type=float, default=600.0)
    rd = sub.add_parser("read")
    rd.add_argument("uri")
    rd.add_argument("stopfile")
    rd.add_argument("prefixes", nargs="+")
    part = sub.add_parser("participate")
    part.add_argument("uri")
    part.add_argument("prefix")
    part.add_argument("writer")
    part.add_argument("names", nargs="+")
    args = parser.parse_args()
    configure_logging("INFO", "console")  # to stderr: stdout carries the progress lines and the result
    command = {"publish": publish, "read": read, "participate": participate}[args.command]
    try:
        result = command(args)
    except AlreadyExists as exc:
        result = {"outcome": "exists", "message": str(exc)}
    except ReviewStackError as exc:  # what a user would see: the class and the message, no traceback
        say(json.dumps({"outcome": "error", "type": type(exc).__name__, "message": str(exc)}))
        return 3
    say(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
