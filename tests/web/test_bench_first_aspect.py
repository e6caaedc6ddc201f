"""bench/web_first_aspect.py against the test page: it logs in, reviews, and records the wait."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from ..refuser import paper_text
from .conftest import LOGIN_TOKEN, WebPage

BENCH = Path(__file__).resolve().parents[2] / "bench" / "web_first_aspect.py"


def test_the_bench_times_upload_to_first_aspect_and_writes_its_json(web: WebPage, tmp_path: Path) -> None:
    paper = tmp_path / "study.md"
    paper.write_text(paper_text(random.Random(3)))
    token = tmp_path / "token"
    token.write_text(LOGIN_TOKEN + "\n")
    out = tmp_path / "result.json"
    command = [
        sys.executable,
        str(BENCH),
        "--url",
        web.url,
        "--token-file",
        str(token),
        "--system",
        "refuser",
    ]
    command += ["--papers", str(paper), "--lambdas", "0,3", "--out", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "upload → first aspect" in run.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["lambda"] for r in rows] == [0.0, 3.0]
    for row in rows:
        assert 0 < row["server_first_aspect_s"] <= row["first_aspect_s"] <= row["done_s"]
        assert row["generated_tokens"] > 0
    assert rows[1]["declined"] < rows[0]["declined"]  # λ reached the model through the page
