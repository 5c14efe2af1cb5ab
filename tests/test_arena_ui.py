"""The Arena tab in a real browser (Debian chromium via Playwright) on the real SmolLM2 base and a
real tiny LoRA adapter: a battle started with Enter, vote, names revealed, leaderboard (plain and
style-controlled) updated, two tabs voting at once."""
from __future__ import annotations

import re

import pytest
from conftest import launch_blocks, make_tiny_adapter

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def launch_arena(settings):
    import gradio as gr

    from chatapp.generation import GenerationSettings
    from chatapp.model import ModelRegistry
    from eval.arena import ArenaStore
    from eval.ui import build_arena_tab

    store = ArenaStore(settings.arena_db)
    with gr.Blocks() as demo:
        with gr.Tab("Arena") as tab:
            build_arena_tab(settings, ModelRegistry(settings), store, GenerationSettings(max_new_tokens=10), tab=tab)
        with gr.Tab("Fine-tune"):  # where a user goes to train the adapter, then comes back
            gr.Markdown("training happens here")
    return demo, store, launch_blocks(demo)


def battle(page, prompt: str, enter: bool = False) -> tuple[str, str]:
    box = page.locator("#arena-prompt textarea")
    box.fill(prompt)
    if enter:
        box.press("Enter")  # as in the Chat tab: Enter starts it, no newline
    else:
        page.locator("#arena-go").click()
    page.locator("#vote-a:not([disabled])").wait_for(timeout=180_000)
    return (page.locator("#arena-model-a textarea").input_value(),
            page.locator("#arena-model-b textarea").input_value())


ROWS = "#leaderboard [role=row]:not([aria-rowindex='1'])"  # data rows of Gradio's grid (row 1 is the header)


def leaderboard_rows(page) -> list[list[str]]:
    rows = page.locator(ROWS)
    return [[c.strip() for c in rows.nth(i).locator("[role=gridcell]").all_inner_texts()] for i in range(rows.count())]


def test_battle_vote_reveal_and_leaderboard(browser, tmp_path, artifacts):
    from chatapp.settings import Settings

    settings = Settings.from_env(data_dir=tmp_path / "data")
    make_tiny_adapter(settings, seed=1, scale=0.5)
    demo, store, url = launch_arena(settings)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 1500})
        page.goto(url, wait_until="load")
        page.locator("#arena-prompt textarea").wait_for()
        assert not any(any(r) for r in leaderboard_rows(page))  # no votes yet
        assert page.locator("#vote-a").is_disabled()

        answer_a, answer_b = battle(page, "What is the capital of France?", enter=True)
        assert page.locator("#arena-prompt textarea").input_value() == "What is the capital of France?"  # no newline
        assert answer_a.strip() and answer_b.strip() and answer_a != answer_b
        assert page.locator("#arena-reveal").inner_text().strip().startswith("Which answer")  # no names yet
        assert "base" not in page.locator("#arena-reveal").inner_text()

        page.locator("#vote-b").click()
        reveal = page.locator("#arena-reveal", has_text="was")
        reveal.wait_for(timeout=60_000)
        names = re.search(r"Model A was (\S+), Model B was (\S+)\.", reveal.inner_text())
        assert names and {names[1], names[2]} == {"base", "tiny"}
        winner = names[2]
        assert page.locator("#vote-a").is_disabled() and page.locator("#vote-b").is_disabled()  # one vote
        page.locator(ROWS).nth(1).wait_for(timeout=30_000)
        rows = leaderboard_rows(page)
        assert rows[0][1] == winner and rows[0][0] == "1" and rows[0][6] == "1" and rows[0][7] == "1/0/0"
        assert re.fullmatch(r"\d+\.\d \[\d+, \d+\]", rows[0][8]) and rows[0][9] in ("1", "2")  # style control
        assert store.count() == 1 and store.battles()[0].winner == "model_b"
        assert store.battles()[0].model_b == winner and store.battles()[0].answer_b == answer_b
        page.screenshot(path=str(artifacts / "arena-after-vote.png"), full_page=True)

        # Two tabs battle, then vote at (nearly) the same moment: both votes are kept.
        other = browser.new_page(viewport={"width": 1280, "height": 1200})
        other.goto(url, wait_until="load")
        battle(page, "Name a colour.")
        battle(other, "Name an animal.")
        page.locator("#vote-tie").click()
        other.locator("#vote-bad").click()
        page.locator("#arena-reveal", has_text="was").wait_for(timeout=60_000)
        other.locator("#arena-reveal", has_text="was").wait_for(timeout=60_000)
        assert sorted(b.winner for b in store.battles()) == ["model_b", "tie", "tie (bothbad)"]
        other.locator("#arena-refresh").click()
        other.locator(ROWS, has_text="/2/").first.wait_for(timeout=30_000)  # both ties counted
        assert sorted(r[6] for r in leaderboard_rows(other)) == ["3", "3"]
        page.locator("#arena-winrate").scroll_into_view_if_needed()
        page.screenshot(path=str(artifacts / "arena.png"), full_page=True)
    finally:
        demo.close()


def test_fewer_than_two_variants_explains_how_to_make_an_adapter(browser, tmp_path):
    from playwright.sync_api import expect

    from chatapp.settings import Settings

    settings = Settings.from_env(data_dir=tmp_path / "empty")  # no adapters at first; the model is never loaded
    demo, store, url = launch_arena(settings)
    try:
        page = browser.new_page()
        page.goto(url, wait_until="load")
        info = page.locator("#arena-info", has_text="python -m finetune --data FILE --name NAME")
        info.wait_for(timeout=30_000)
        page.locator("#arena-prompt textarea").fill("Hello?")
        page.locator("#arena-go").click()
        page.wait_for_timeout(1500)
        assert "at least two variants" in page.locator("#arena-info").inner_text()
        assert page.locator("#vote-a").is_disabled() and store.count() == 0
        # an adapter trained meanwhile (as the Fine-tune tab does): coming back to the tab, the arena offers it
        page.get_by_role("tab", name="Fine-tune").click()
        make_tiny_adapter(settings, seed=3, scale=0.5, name="fresh")
        page.get_by_role("tab", name="Arena").click()
        expect(page.locator("#arena-info")).to_contain_text("(base, fresh)", timeout=10_000)
        expect(page.locator("#arena-info")).not_to_contain_text("at least two variants")
    finally:
        demo.close()
