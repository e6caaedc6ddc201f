"""Benchmark: how long a person waits on the web page, from pressing Review to the first aspect on screen.

Drives a running page over HTTP exactly as the browser does: logs in, posts the paper (the clock starts
as the upload begins), opens the review's event stream and times the first `aspect` event and the
`done` event; the page's own figures (measured on the server from the upload's arrival) are recorded
beside them. Each paper is reviewed once per λ.

    python bench/web_first_aspect.py --url http://127.0.0.1:PORT --token-file out/demo/web-login-token \\
        --system reviewer --papers data/neurips2025-sample/papers/0yowBBK6tT.md [--lambdas 0,2] [--out FILE]

`make demo` prints the page's URL and keeps it running; the demo's engines run on this machine's CPU.
Prints a table and writes the JSON (machine, commit, settings, one row per review).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import requests
from benchlib import ROOT, commit
from rich.console import Console
from rich.table import Table


def log_in(url: str, token: str) -> requests.Session:
    session = requests.Session()
    page = session.get(f"{url}/login", headers={"Accept": "text/html"}, timeout=30).text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    reply = session.post(f"{url}/login", data={"token": token, "csrf": csrf}, timeout=30)
    if "Review a paper" not in reply.text:
        raise SystemExit("the login was refused: check --token-file")
    return session


def review(session: requests.Session, url: str, paper: Path, system: str, penalty: float) -> dict:
    home = session.get(f"{url}/", headers={"Accept": "text/html"}, timeout=30).text
    csrf = re.search(r'name="csrf" value="([^"]+)"', home).group(1)
    began = time.monotonic()
    posted = session.post(
        f"{url}/reviews",
        data={"system": system, "refusal_penalty": str(penalty), "csrf": csrf},
        files={"paper": (paper.name, paper.read_bytes())},
        allow_redirects=False,
        timeout=60,
    )
    if posted.status_code != 303:
        raise SystemExit(f"the upload was refused ({posted.status_code}): {posted.text[:300]}")
    row = {"paper": paper.name, "system": system, "lambda": penalty}
    event = None
    events = f"{url}{posted.headers['location']}/events"
    with session.get(events, stream=True, timeout=1800, headers={"Accept": "text/event-stream"}) as stream:
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event:
                data = json.loads(line.split(":", 1)[1])
                if event == "aspect" and "first_aspect_s" not in row:
                    row["first_aspect_s"] = round(time.monotonic() - began, 2)
                elif event == "done":
                    row["done_s"] = round(time.monotonic() - began, 2)
                    row["server_first_aspect_s"] = data["first_aspect_s"]
                    row["server_done_s"] = data["finished_s"]
                    row["generated_tokens"] = data["lineage"]["generated tokens"]
                    row["prompt_tokens"] = data["lineage"]["prompt tokens"]
                    row["declined"] = sum(a["empty"] and not a["missing"] for a in data["aspects"])
                    row["not_written"] = sum(a["missing"] for a in data["aspects"])
                    row.setdefault("first_aspect_s", row["done_s"])
                    return row
                elif event == "failed":
                    raise SystemExit(f"the review failed: {data['message']}")
                event = None
    raise SystemExit("the event stream ended without a review")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("--system", required=True)
    parser.add_argument("--papers", type=Path, nargs="+", required=True)
    parser.add_argument("--lambdas", default="0", help="comma-separated λ values, each paper once per value")
    parser.add_argument("--note", default="", help="what the page serves, for the record (engine, sizes)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "web_first_aspect.json"))
    args = parser.parse_args()

    session = log_in(args.url, args.token_file.read_text().strip())
    rows = [
        review(session, args.url, paper, args.system, float(value))
        for paper in args.papers
        for value in args.lambdas.split(",")
    ]
    table = Table(title=f"upload → first aspect on the page ({args.system})")
    for column in ("paper", "λ", "first aspect s", "done s", "page: first / done s", "tokens", "declined"):
        table.add_column(column, justify="left" if column == "paper" else "right")
    for r in rows:
        table.add_row(
            r["paper"],
            f"{r['lambda']:g}",
            f"{r['first_aspect_s']:.1f}",
            f"{r['done_s']:.1f}",
            f"{r['server_first_aspect_s']:.1f} / {r['server_done_s']:.1f}",
            f"{r['prompt_tokens']} + {r['generated_tokens']}",
            str(r["declined"]),
        )
    Console().print(table)
    result = {
        "benchmark": "web_first_aspect",
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs",
        "commit": commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "system": args.system,
        "note": args.note,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
