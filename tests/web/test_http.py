"""The page over plain HTTP, as a hostile or careless client sees it: no session, a forged form, files
too large or of the wrong type, values out of range, a Review service that is down, report paths that
try to leave the store. Every refusal must say why, and the page must go on serving."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator

import pytest
import requests

from ..refuser import paper_text
from .conftest import LOGIN_TOKEN, MAX_UPLOAD, SAMPLE_PAPERS, WebPage

HTML = {"Accept": "text/html"}


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "the page has no CSRF field"
    return match.group(1)


def logged_in(url: str) -> requests.Session:
    session = requests.Session()
    form = session.get(f"{url}/login", headers=HTML, timeout=10)
    reply = session.post(
        f"{url}/login",
        data={"token": LOGIN_TOKEN, "csrf": csrf_of(form.text), "next": "/"},
        headers=HTML,
        timeout=30,
    )
    assert reply.status_code == 200 and "Review a paper" in reply.text, reply.text[:500]
    return session


def upload(
    session: requests.Session,
    url: str,
    name: str,
    content: bytes,
    *,
    system="refuser",
    penalty="0",
    csrf=None,
) -> requests.Response:
    home = session.get(f"{url}/", headers=HTML, timeout=10)
    form = {
        "system": system,
        "refusal_penalty": penalty,
        "csrf": csrf if csrf is not None else csrf_of(home.text),
    }
    return session.post(
        f"{url}/reviews",
        data=form,
        files={"paper": (name, content)},
        headers=HTML,
        timeout=30,
        allow_redirects=False,
    )


def events(session: requests.Session, url: str) -> Iterator[tuple[str, dict]]:
    """The server-sent events of one review, parsed."""
    with session.get(url, stream=True, timeout=120, headers={"Accept": "text/event-stream"}) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in reply.iter_lines(decode_unicode=True):
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event:
                yield event, json.loads(line.split(":", 1)[1])
                event = None


@pytest.fixture(scope="module")
def session(web: WebPage) -> requests.Session:
    return logged_in(web.url)


PAPER = next(SAMPLE_PAPERS.glob("*.md"))


def test_without_a_session_pages_send_people_to_the_login_and_data_is_refused(web: WebPage) -> None:
    anonymous = requests.Session()
    page = anonymous.get(f"{web.url}/reports", headers=HTML, timeout=10, allow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login?next=/reports"
    every_data_route = (
        "/reviews/abc/events",
        "/reviews/abc.json",
        "/reviews/abc.md",
        "/reviews/abc",
        "/reports",
        f"/reports/evaluations/{web.eval_id}",
        f"/reports/evaluations/{web.eval_id}/compare",
    )
    for path in every_data_route:
        reply = anonymous.get(f"{web.url}{path}", timeout=10)
        assert reply.status_code == 401 and "log in" in reply.json()["error"]
    reply = anonymous.post(f"{web.url}/reviews", files={"paper": ("p.md", b"# x")}, timeout=10)
    assert reply.status_code == 401


def test_a_wrong_token_or_a_forged_login_form_does_not_log_in(web: WebPage) -> None:
    browser = requests.Session()
    csrf = csrf_of(browser.get(f"{web.url}/login", headers=HTML, timeout=10).text)
    wrong = browser.post(f"{web.url}/login", data={"token": "guess", "csrf": csrf}, headers=HTML, timeout=30)
    assert wrong.status_code == 401 and "wrong token" in wrong.text
    forged = requests.post(
        f"{web.url}/login", data={"token": LOGIN_TOKEN, "csrf": "x"}, headers=HTML, timeout=30
    )
    assert forged.status_code == 403 and "CSRF" in forged.text
    assert browser.get(f"{web.url}/", headers=HTML, timeout=10, allow_redirects=False).status_code == 303
    # whatever cookie the refusal set (a CSRF token for the next form) does not open the page
    after = requests.get(
        f"{web.url}/", cookies=forged.cookies, headers=HTML, timeout=10, allow_redirects=False
    )
    assert after.status_code == 303


def test_the_login_link_cannot_send_anyone_to_another_site(web: WebPage) -> None:
    browser = requests.Session()
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        page = browser.get(f"{web.url}/login", params={"next": target}, headers=HTML, timeout=10)
        assert 'name="next" value="/"' in page.text


def test_a_form_without_this_sessions_csrf_token_is_refused(web: WebPage, session) -> None:
    reply = upload(session, web.url, "paper.md", PAPER.read_bytes(), csrf="forged")
    assert reply.status_code == 403 and "CSRF" in reply.text


def test_an_oversized_upload_is_refused_before_it_is_read(web: WebPage, session) -> None:
    reply = upload(session, web.url, "big.md", b"a" * (MAX_UPLOAD + 1))
    assert reply.status_code == 413 and "limit" in reply.text
    whole_body = upload(session, web.url, "huge.md", b"a" * (MAX_UPLOAD + 200_000))
    assert whole_body.status_code == 413


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("paper.docx", b"PK\x03\x04 not a paper", "is not a paper this page reads"),
        ("paper.exe", b"MZ\x90\x00", "is not a paper this page reads"),
        ("fake.pdf", b"# markdown pretending", "is not a PDF"),
        ("latin1.md", "r\u00e9sum\u00e9".encode("latin-1"), "not UTF-8"),
    ],
)
def test_a_file_of_the_wrong_type_is_refused_with_what_is_accepted(
    web, session, name, content, words
) -> None:
    reply = upload(session, web.url, name, content)
    assert reply.status_code == 415 and words in reply.text


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("refusal_penalty", "nan", "λ must be a number from 0 to 10"),
        ("refusal_penalty", "-1", "λ must be a number from 0 to 10"),
        ("refusal_penalty", "1e9", "λ must be a number from 0 to 10"),
        ("system", "tgi.internal:80", "unknown system"),
    ],
)
def test_out_of_range_settings_are_refused(web, session, field, value, words) -> None:
    settings = {"system": "refuser", "penalty": "0"} | {"system" if field == "system" else "penalty": value}
    reply = upload(session, web.url, "paper.md", PAPER.read_bytes(), **settings)
    assert reply.status_code == 400 and words in reply.text


def test_a_review_service_that_is_down_gives_a_message_and_the_page_keeps_serving(web, session) -> None:
    reply = upload(session, web.url, PAPER.name, PAPER.read_bytes(), system="offline")
    assert reply.status_code == 303
    stream = list(events(session, f"{web.url}{reply.headers['location']}/events"))
    assert [e for e, _ in stream] == ["started", "failed"]
    assert "cannot be reached right now" in stream[-1][1]["message"]
    assert session.get(f"{web.url}/healthz", timeout=10).status_code == 200
    # the finished failure is replayed on reload, not retried behind the user's back
    again = list(events(session, f"{web.url}{reply.headers['location']}/events"))
    assert [e for e, _ in again] == ["failed"]


def test_a_review_streams_aspect_by_aspect_and_downloads_as_json_and_markdown(web, session) -> None:
    """On the tiny refusing model, with a paper like those it was trained on (the browser test reviews a
    real sample paper with the shipped reviewer)."""
    reply = upload(session, web.url, "study.md", paper_text(random.Random(11)).encode())
    review = f"{web.url}{reply.headers['location']}"
    stream = list(events(session, f"{review}/events"))
    names = [e for e, _ in stream]
    assert names[0] == "started" and names[-1] == "done" and "text" in names
    aspects = [d["index"] for e, d in stream if e == "aspect"]
    assert aspects == sorted(aspects) and len(aspects) >= 5  # each finished aspect as it ends, in order
    done = stream[-1][1]
    assert len(done["aspects"]) == 7 and done["lineage"]["λ (refusal penalty)"] == "0"
    assert 0 < done["first_aspect_s"] <= done["finished_s"]
    record = session.get(f"{review}.json", timeout=10)
    assert record.headers["content-disposition"].startswith("attachment")
    body = record.json()
    assert body["paper_id"] == "study" and body["system"] == "refuser"
    assert len(body["review"]["aspects"]) == 7 and body["lineage"]["parameters"]["refusal_penalty"] == 0
    markdown = session.get(f"{review}.md", timeout=10).text
    assert markdown.startswith("# Review of study") and markdown.count("\n## ") == 7
    # another session cannot see it
    assert requests.get(f"{review}.json", timeout=10).status_code == 401
    stranger = logged_in(web.url)
    assert stranger.get(f"{review}.json", timeout=10).status_code == 404


@pytest.mark.parametrize(
    "path, status",
    [
        ("/reports/evaluations/..%2F..%2Fdatasets", 404),  # the decoded slashes match no route
        ("/reports/evaluations/a..b", 400),
        ("/reports/datasets/x", 404),
        ("/reports/evaluations/20990101-000000-deadbeef", 404),
    ],
)
def test_report_paths_stay_inside_the_reports(web, session, path, status) -> None:
    assert session.get(f"{web.url}{path}", timeout=10).status_code == status


def test_a_report_is_served_from_the_store_and_may_run_nothing(web, session) -> None:
    listing = session.get(f"{web.url}/reports", headers=HTML, timeout=10).text
    assert f"/reports/evaluations/{web.eval_id}" in listing
    report = session.get(f"{web.url}/reports/evaluations/{web.eval_id}", timeout=10)
    assert (
        report.status_code == 200
        and report.content == (web.store / "evaluations" / web.eval_id / "report.html").read_bytes()
    )
    policy = report.headers["content-security-policy"]
    assert "sandbox" in policy and "script-src" not in policy and "default-src 'none'" in policy


def test_two_systems_compared_on_one_paper(web, session) -> None:
    page = session.get(
        f"{web.url}/reports/evaluations/{web.eval_id}/compare",
        params={"paper": "p1"},
        headers=HTML,
        timeout=30,
    )
    assert page.status_code == 200, page.text[:500]
    assert "ours" in page.text and "ours-l2" in page.text
    assert "The method is not compared with strong recent baselines." in page.text  # a human point
    assert "hits human #1" in page.text  # ours's baselines point matches the first human point
    assert "Other important review comments" in page.text and "Suggestions for improvement" not in page.text
    unknown = session.get(
        f"{web.url}/reports/evaluations/{web.eval_id}/compare",
        params={"paper": "nope"},
        headers=HTML,
        timeout=30,
    )
    assert unknown.status_code == 404


def test_probes_answer_without_a_session(web: WebPage) -> None:
    assert requests.get(f"{web.url}/healthz", timeout=10).json() == {"status": "ok"}
    assert requests.get(f"{web.url}/readyz", timeout=10).json() == {"status": "ready"}
