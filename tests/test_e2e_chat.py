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


def test_drop_a_pdf_ask_at_once_and_see_the_quote_on_its_page(app_url, browser, corpus, artifacts):
    """What a new user does: drop the paper in Documents, go straight to Chat and ask. The question waits
    for the file to be stored, then the answer lists p. 8 with the quote holding 0.1 highlighted, and the
    page picture with the quote marked opens from the source."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    page.goto(app_url, wait_until="load")
    # the model loads in the background: the line on the Chat tab follows it without a reload
    expect(page.locator("#model-info")).to_contain_text("precision", timeout=180_000)

    page.get_by_role("tab", name="Documents").click()
    page.locator("#upload-files input[type=file]").set_input_files(str(corpus / "pdf" / PDF))
    page.get_by_role("tab", name="Chat").click()  # at once: no "Add to the store" press
    page.locator("#chat-input textarea").fill("What value of label smoothing was used?")
    page.locator("#chat-input textarea").press("Enter")

    sources = page.locator("#sources")
    try:
        expect(sources).to_contain_text("p. 8", timeout=240_000)
        expect(sources.locator(".chat-quote").first).to_contain_text("0.1")
        expect(sources.locator("mark", has_text="label smoothing").first).to_be_attached()
        sources.locator(".chat-page summary").first.click()
        picture = sources.locator("img.chat-page-image").first
        expect(picture).to_be_visible()
        assert picture.evaluate("img => img.naturalWidth") > 500
    finally:
        page.screenshot(path=str(artifacts / "e2e-evidence.png"), full_page=True)
    answer = page.locator("#chatbot [data-testid='bot']").last.inner_text()
    assert answer.strip() and "[1]" not in answer

    # the file was stored from the drop alone
    page.get_by_role("tab", name="Documents").click()
    expect(page.locator("#sources-table")).to_contain_text(PDF)
    expect(page.locator("#ingest-log textarea")).to_have_value(re.compile(r"1 of 1 sources stored"))

    # A second question: while it streams, the first answer's sources are not shown beside it
    page.get_by_role("tab", name="Chat").click()
    page.locator("#chat-input textarea").fill("How many layers does the encoder have?")
    page.locator("#chat-send").click()
    expect(sources).to_contain_text("Sources appear when this answer is complete", timeout=30_000)
    # the next question, typed and entered while this answer streams, is not wiped by the stream: it is asked
    # once this answer is done, after it in the conversation
    box = page.locator("#chat-input textarea")
    box.fill("How many warmup steps were used?")
    box.press("Enter")
    expect(page.locator("#chatbot [data-testid='user']").last).to_contain_text("layers")
    expect(box).to_have_value("How many warmup steps were used?")
    expect(page.locator("#chatbot [data-testid='user']").last).to_contain_text("warmup steps", timeout=180_000)
    # in order: the encoder question, its whole answer, then the warmup question
    turns = page.locator("#chatbot [data-testid='user'], #chatbot [data-testid='bot']")
    shown = [(t.get_attribute("data-testid"), t.inner_text().strip()) for t in turns.all()]
    asked = [i for i, (role, _) in enumerate(shown) if role == "user"]
    assert [shown[i][1] for i in asked[-2:]] == ["How many layers does the encoder have?",
                                                "How many warmup steps were used?"]
    between = shown[asked[-2] + 1:asked[-1]]  # the encoder answer (its reasoning and its words)
    assert between and all(role == "bot" and text for role, text in between)
    expect(sources).to_contain_text("p. 7", timeout=180_000)
    expect(box).to_have_value("")


def test_asking_before_any_document_is_stored_points_to_the_documents_tab(browser, tmp_path):
    from playwright.sync_api import expect

    (tmp_path / "empty-data").mkdir()
    with running_app(tmp_path / "empty-data") as url:
        page = browser.new_page()
        page.goto(url, wait_until="load")
        page.locator("#chat-input textarea").fill("How many warmup steps were used?")
        page.locator("#chat-input textarea").press("Enter")
        expect(page.locator("#chatbot [data-testid='bot']").last).to_contain_text("Documents tab", timeout=60_000)
        expect(page.locator("#sources")).to_contain_text("no documents are stored yet")


def test_a_model_that_cannot_be_loaded_is_named_on_the_page_and_the_question_stays(browser, tmp_path, artifacts):
    """CHATAPP_BASE_MODEL naming what cannot be loaded here (a hub id offline, a folder without a model): the
    model line said "loading" forever, and a question put every output in Gradio's red "Error" state and was
    gone. Now the line says why, and the question stays in the chat with the failure under it."""
    from conftest import data_with_the_paper
    from playwright.sync_api import expect

    data = data_with_the_paper(tmp_path / "data")  # documents stored, so the question reaches the model
    missing = tmp_path / "no-model-here"
    with running_app(data, env={"CHATAPP_BASE_MODEL": str(missing)}) as url:
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(url, wait_until="load")
        line = page.locator("#model-info")
        expect(line).to_contain_text("could not be loaded", timeout=60_000)
        expect(line).to_contain_text("no-model-here")
        page.locator("#chat-input textarea").fill("How many warmup steps were used?")
        page.locator("#chat-input textarea").press("Enter")
        chatbot = page.locator("#chatbot")
        expect(chatbot.locator("[data-testid='bot']").last).to_contain_text("Answering failed", timeout=60_000)
        expect(chatbot.locator("[data-testid='user']").last).to_contain_text("How many warmup steps were used?")
        page.screenshot(path=str(artifacts / "e2e-model-not-loaded.png"))
