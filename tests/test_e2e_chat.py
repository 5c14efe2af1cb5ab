"""End to end in a real browser: start app.py, upload the paper in Documents, ask in Chat, check the cited page.

Debian chromium driven by Playwright (no browser download is possible here).
"""
from __future__ import annotations

import re

import pytest
from conftest import running_app

PDF = "attention-is-all-you-need.pdf"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("e2e-data")) as url:
        yield url


def test_upload_ask_and_see_the_cited_page(app_url, browser, corpus, artifacts):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    page.goto(app_url, wait_until="load")

    # Documents tab: upload the paper and ingest it
    page.get_by_role("tab", name="Documents").click()
    page.locator("#upload-files input[type=file]").set_input_files(str(corpus / "pdf" / PDF))
    page.locator("#ingest-button").click()
    # the progress text ("reading NAME") shows on every output while ingesting, so wait for the summary line
    expect(page.locator("#ingest-log textarea")).to_have_value(re.compile(r"1 of 1 sources stored"), timeout=180_000)
    expect(page.locator("#sources-table")).to_contain_text(PDF)

    # Chat tab: ask, and wait for the streamed answer and its sources
    page.get_by_role("tab", name="Chat").click()
    page.locator("#chat-input textarea").fill("How many warmup steps were used?")
    page.locator("#chat-send").click()
    expect(page.locator("#chatbot [data-testid='bot']").last).to_be_visible(timeout=180_000)
    sources = page.locator("#sources")
    try:
        expect(sources).to_contain_text(PDF, timeout=180_000)
    finally:
        page.screenshot(path=str(artifacts / "e2e-chat.png"), full_page=True)
    expect(sources).to_contain_text("p. 7")
    answer = page.locator("#chatbot [data-testid='bot']").last.inner_text()
    assert answer.strip()
    expect(page.locator("#model-info")).to_contain_text("precision")

    # A second question: while it streams, the first answer's sources are not shown beside it
    page.locator("#chat-input textarea").fill("How many layers does the encoder have?")
    page.locator("#chat-send").click()
    expect(sources).to_contain_text("Sources appear when this answer is complete", timeout=30_000)
    expect(sources).to_contain_text("p. 3", timeout=180_000)
