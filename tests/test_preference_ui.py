"""The loop in a real browser (Debian chromium via Playwright) on the real SmolLM2: battle with Enter
and vote in the Arena, see "train a variant from N votes", train dpo from the votes in the Fine-tune
tab, and find the new variant in the Arena without a restart."""
from __future__ import annotations

import json

import pytest
from conftest import launch_blocks, make_tiny_adapter
from test_finetune_preference import record_votes

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_vote_with_enter_train_from_the_votes_and_battle_the_new_variant(browser, tmp_path, artifacts):
    import gradio as gr

    from chatapp.generation import GenerationSettings
    from chatapp.model import ModelRegistry
    from chatapp.settings import Settings
    from eval.arena import ArenaStore
    from eval.ui import build_arena_tab
    from finetune.ui import build_finetune_tab

    settings = Settings.from_env(data_dir=tmp_path / "data")
    make_tiny_adapter(settings, seed=1, scale=0.5)
    store = ArenaStore(settings.arena_db)
    record_votes(store)  # 12 decisive votes, a tie and a 'both bad' from earlier sessions
    registry = ModelRegistry(settings)
    with gr.Blocks() as demo:
        with gr.Tab("Fine-tune"):
            build_finetune_tab(settings, registry)
        with gr.Tab("Arena"):
            build_arena_tab(settings, registry, store, GenerationSettings(max_new_tokens=8))
    url = launch_blocks(demo)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        page.goto(url, wait_until="load")
        page.get_by_role("tab", name="Arena").click()
        box = page.locator("#arena-prompt textarea")
        box.fill("Name a fruit.")
        box.press("Enter")  # Enter starts the battle, as in the Chat tab
        page.locator("#vote-a:not([disabled])").wait_for(timeout=300_000)
        page.locator("#vote-a").click()
        page.locator("#arena-train-hint", has_text="Train a variant from 13 votes").wait_for(timeout=60_000)
        assert store.count() == 15
        page.screenshot(path=str(artifacts / "arena-train-hint.png"), full_page=True)

        page.get_by_role("tab", name="Fine-tune").click()
        page.locator("#ft-from-arena input").click()  # picks dpo
        page.wait_for_function("document.querySelector('#ft-method input[value=dpo]').checked", timeout=30_000)
        for elem_id, value in (("ft-name", "voted"), ("ft-max-steps", 2), ("ft-test-size", 0), ("ft-lora-r", 4)):
            field = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
            field.fill(str(value))
            field.press("Tab")
        page.locator("#ft-start").click()
        page.wait_for_function("document.querySelector('#ft-status').innerText.includes('Done')", timeout=600_000)
        # The loss chart draws its two steps as a line on numeric axes. Once drawn before the Arena tab hid it, it
        # put them on category axes 15 px apart (chart_value in finetune/ui.py).
        page.wait_for_function("(document.querySelector('#ft-loss .mark-line path')?.getBBox().height || 0) > 40",
                               timeout=30_000)
        page.screenshot(path=str(artifacts / "finetune-dpo-from-arena.png"), full_page=True)
        card = json.loads((settings.adapters_dir / "voted" / "card.json").read_text())
        assert card["method"] == "dpo" and card["data"]["from_arena"]["battles"] == 15
        assert card["data"]["train_pairs"] == 13 and card["training"]["optimizer_steps"] == 2

        page.get_by_role("tab", name="Arena").click()
        page.locator("#arena-refresh").click()
        page.locator("#arena-info", has_text="voted").wait_for(timeout=30_000)  # no restart
        assert "voted" in registry.variants()
    finally:
        demo.close()
