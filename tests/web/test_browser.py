"""The page in a real browser (Debian's headless Chromium): log in, upload a bundled sample paper, watch
the shipped reviewer's seven aspects arrive, change λ and review again, open a report and a comparison.
A screenshot of the finished review is saved (REVIEWSTACK_SCREENSHOTS names a folder to copy it to)."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reviewstack.common.child_process import ChildProcess

from .. import assets
from ..browser import headless_chromium
from ..conftest import engine_process, service_process
from .conftest import GRPC_TOKEN, LOGIN_TOKEN, SAMPLE_PAPERS, start_web

ROOT = Path(__file__).resolve().parents[2]
REVIEWER = ROOT / "models" / "smollm2-135m-reviewer-lora"
PAPER = SAMPLE_PAPERS / "0yowBBK6tT.md"
PROMPT, NEW_TOKENS = 512, 700  # the paper's first ~330 tokens; it ends its seven aspects in ~590


@pytest.fixture(scope="module")
def reviewer_model(tmp_path_factory) -> Path:
    """The shipped reviewer adapter merged into the embedded SmolLM2 once per adapter and versions (the
    test asset cache): a real model that writes the 7-aspect format on real papers."""
    cached = assets.asset_dir(
        "reviewer-merged",
        [REVIEWER / "adapter_model.safetensors", REVIEWER / "reviewstack-adapter.json"],
        ["transformers", "torch", "peft"],
    )
    if not (cached / "config.json").is_file():
        staging = cached.with_name(f".{cached.name}.partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        merge = ChildProcess(
            "reviewstack-merge",
            [str(Path(sys.executable).with_name("reviewstack-merge")), str(REVIEWER), "--out", str(staging)],
            tmp_path_factory.mktemp("merge") / "merge.log",
            dict(os.environ),
        )
        assert merge.wait(timeout_s=300) == 0, "merging the shipped reviewer failed"
        try:
            staging.rename(cached)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return cached


@pytest.fixture(scope="module")
def page(reviewer_model, review_service, evaluated_store, tmp_path_factory) -> Iterator[str]:
    """The page with two systems: the shipped reviewer (on its own engine) and the refusing test model."""
    tmp = tmp_path_factory.mktemp("browser")
    flags = ("--max-input-tokens", str(PROMPT + 32), "--max-total-tokens", str(PROMPT + 32 + NEW_TOKENS))
    with engine_process(reviewer_model, tmp / "engine.log", *flags, "--max-batch-size", "1") as engine:
        env = {
            **os.environ,
            "REVIEWSTACK_BACKEND_URL": engine,
            "REVIEWSTACK_TOKENIZER": str(reviewer_model),
            "REVIEWSTACK_MAX_PROMPT_LENGTH": str(PROMPT),
            "REVIEWSTACK_MAX_NEW_TOKENS": str(NEW_TOKENS),
            "REVIEWSTACK_SERVED_MODEL": "SmolLM2-135M-Instruct + smollm2-135m-reviewer-lora",
            "REVIEWSTACK_AUTH_TOKEN": GRPC_TOKEN,
            "REVIEWSTACK_STORE": str(tmp / "store"),
        }
        with service_process(
            "reviewstack-review", "reviewstack.v1.Review", env, tmp / "review.log"
        ) as review:
            store, _, evaluation = evaluated_store
            # the reviewer's card says rp 1.1 (its evaluation also sampled; greedy here, so the test
            # sees the same review every run)
            services = {"reviewer": {"target": review, "repetition_penalty": 1.1}, "refuser": review_service}
            child, url = start_web(tmp / "web.log", store, services, evaluation)
            try:
                yield url
            finally:
                assert child.stop(timeout_s=30) == 0


def _wait(driver, condition, timeout: float, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)
    except TimeoutException:
        pytest.fail(
            f"{what} within {timeout:g} s; the page shows:\n{driver.find_element('tag name', 'body').text}"
        )


def test_a_person_reviews_a_paper_changes_lambda_and_reads_a_report(page, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    with headless_chromium() as driver:
        driver.set_window_size(1400, 1700)
        driver.get(f"{page}/")
        assert driver.current_url.endswith("/login?next=/")
        driver.find_element(By.ID, "token").send_keys(LOGIN_TOKEN)
        driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        _wait(driver, lambda d: d.find_elements(By.ID, "review-form"), 10, "the review form after logging in")

        driver.find_element(By.ID, "paper").send_keys(str(PAPER))
        Select(driver.find_element(By.ID, "system")).select_by_value("reviewer")
        driver.find_element(By.CSS_SELECTOR, "#review-form button[type=submit]").click()
        _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".aspect.filled"), 120, "a first aspect")
        _wait(
            driver, lambda d: d.find_element(By.ID, "review").get_attribute("data-state"), 300, "the review"
        )
        root = driver.find_element(By.ID, "review")
        assert root.get_attribute("data-state") == "done", driver.find_element(By.ID, "error").text
        aspects = driver.find_elements(By.CSS_SELECTOR, ".aspect")
        assert len(aspects) == 7 and all("filled" in a.get_attribute("class") for a in aspects)
        written = [a for a in aspects if not {"declined", "missing"} & set(a.get_attribute("class").split())]
        assert len(written) >= 5 and all(a.find_elements(By.CSS_SELECTOR, "li") for a in written)
        assert not any("missing" in a.get_attribute("class") for a in aspects)  # the reviewer ended its turn
        status = driver.find_element(By.ID, "status").text
        first = re.search(r"first aspect ([\d.]+) s after upload", status)
        assert status.startswith("Done:") and first, status
        lineage = driver.find_element(By.ID, "lineage").text
        assert "smollm2-135m-reviewer-lora" in lineage and "repetition penalty 1.1" in lineage
        shot = tmp_path / "review.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 20_000
        if folder := os.environ.get("REVIEWSTACK_SCREENSHOTS"):
            shutil.copyfile(shot, Path(folder) / "web-review.png")
        print(f"\nscreenshot: {shot}; first aspect {first.group(1)} s after upload")

        # λ changed, the same paper reviewed again: the new review streams under the new setting
        penalty = driver.find_element(By.ID, "refusal_penalty")
        penalty.clear()
        penalty.send_keys("1.5")
        driver.find_element(By.CSS_SELECTOR, "#again-form button[type=submit]").click()
        _wait(
            driver, lambda d: "λ = 1.5" in d.find_element(By.TAG_NAME, "h1").text, 10, "the new review's page"
        )
        _wait(
            driver,
            lambda d: d.find_elements(By.CSS_SELECTOR, ".aspect.filled"),
            120,
            "the new review's aspects",
        )
        assert driver.find_element(By.ID, "paper-name").text == PAPER.name
        # two reviews of this session are listed; leaving the page stops the second one

        driver.find_element(By.LINK_TEXT, "Reports").click()
        driver.find_element(By.LINK_TEXT, "Open report").click()
        assert "Evaluation" in driver.title or driver.find_elements(By.TAG_NAME, "h1")
        assert "ours-l2" in driver.page_source  # the report of the two systems, served from the store
        driver.back()
        driver.find_element(By.LINK_TEXT, "Compare systems on a paper").click()
        human = driver.find_elements(By.CSS_SELECTOR, ".human li")
        assert human and driver.find_elements(By.CSS_SELECTOR, ".points li.hit")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors  # no script error, no resource refused by the page's policy
