"""Eight users at once on the real app: four browser tabs chat and four OpenAI-SDK clients ask through /v1
while a fifth tab stores an upload and a sixth votes in the Arena. Nothing fails, nothing is lost, a tab
whose question waits sees its place in the queue, and the vote and the sources list come back while
answers are still being generated (they never queue behind a generation)."""
from __future__ import annotations

import re
import threading

import openai
import pytest
from conftest import data_with_the_paper, make_tiny_adapter, running_app

from chatapp.settings import Settings
from eval.arena import ArenaStore

pytestmark = [pytest.mark.browser, pytest.mark.slow]

QUESTIONS = ["What value of label smoothing was used?", "How many attention heads does the base model use?",
             "What optimizer was used for training?", "How many warmup steps were used?"]
HTML_PAGE = "wikipedia.html"


def ask_in_tab(page, question: str) -> None:
    page.get_by_text("Generation settings").click()  # short answers: eight of them share two cores
    page.locator("#max-new-tokens input[type=number]").fill("48")
    page.locator("#max-new-tokens input[type=number]").press("Enter")
    box = page.locator("#chat-input textarea")
    box.fill(question)
    box.press("Enter")


def test_eight_users_chat_search_and_vote_while_an_upload_is_stored(browser, tmp_path, corpus, artifacts):
    data = data_with_the_paper(tmp_path / "data")
    settings = Settings.from_env(data_dir=data)
    make_tiny_adapter(settings, seed=1, scale=0.5)
    with running_app(data) as url:
        def user_page():
            # one browser context per user, as different people have: one context would share Chromium's
            # six connections per host, which the pages' event streams hold open
            return browser.new_context(viewport={"width": 1280, "height": 1100}).new_page()

        arena = user_page()
        arena.goto(url)
        arena.get_by_role("tab", name="Arena").click()
        arena.locator("#arena-prompt textarea").fill("Reply with one word: hello.")
        arena.locator("#arena-prompt textarea").press("Enter")
        arena.locator("#vote-a:not([disabled])").wait_for(timeout=240_000)  # a battle to vote on, later

        chats = [user_page() for _ in QUESTIONS]
        for page in chats:
            page.goto(url)
            page.locator("#chat-input textarea").wait_for()
        documents = user_page()
        documents.goto(url)
        documents.get_by_role("tab", name="Documents").click()

        api_answers: list[str] = []
        api_errors: list[Exception] = []

        def api_user(question: str) -> None:
            client = openai.OpenAI(base_url=url + "v1", api_key="unused", max_retries=0, timeout=600)
            try:
                reply = client.chat.completions.create(model="base", max_tokens=32,
                                                       messages=[{"role": "user", "content": question}])
                api_answers.append(reply.choices[0].message.content)
            except Exception as error:  # collected: the assertion below names it
                api_errors.append(error)

        clients = [threading.Thread(target=api_user, args=(q,)) for q in QUESTIONS]
        for client in clients:
            client.start()
        for page, question in zip(chats, QUESTIONS):
            ask_in_tab(page, question)
        documents.locator("#upload-files input[type=file]").set_input_files(str(corpus / "html" / HTML_PAGE))

        # the last tab's question waits behind the others, and says where it stands
        waiting = chats[-1].locator("#chatbot", has_text=re.compile(r"queue: \d+/\d+"))
        waiting.wait_for(timeout=60_000)
        chats[-1].screenshot(path=str(artifacts / "many-users-queue.png"))

        # the vote and the sources list come back while answers are still being generated
        arena.locator("#vote-a").click()
        arena.locator("#arena-reveal", has_text="was").wait_for(timeout=60_000)
        documents.locator("#refresh-sources").click()
        documents.locator("#sources-table", has_text="attention-is-all-you-need.pdf").wait_for(timeout=60_000)
        unfinished = [p for p in chats if not p.locator("#sources", has_text="p.").count()]
        assert unfinished, "every answer was done before the vote came back: the test did not overlap them"

        for page in chats:
            page.locator("#sources", has_text="p.").wait_for(timeout=600_000)
        for client in clients:
            client.join(timeout=600)
        documents.wait_for_function(
            "() => document.querySelector('#ingest-log textarea').value.includes('1 of 1 sources stored')",
            timeout=300_000)

        assert api_errors == [] and len(api_answers) == len(QUESTIONS) and all(a.strip() for a in api_answers)
        for page in chats:
            assert page.locator(".toast-body").count() == 0  # no error toast in any tab
            assert page.locator("#chatbot [data-testid='bot']").last.inner_text().strip()
        assert ArenaStore(settings.arena_db).count() == 1
        documents.locator("#refresh-sources").click()
        documents.locator("#sources-table", has_text=HTML_PAGE).wait_for(timeout=60_000)
        chats[0].screenshot(path=str(artifacts / "many-users-answer.png"), full_page=True)
