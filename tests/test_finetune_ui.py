"""The Fine-tune tab in a real browser (Debian chromium via Playwright) training the real SmolLM2:
upload, start, progress and loss curve, the new variant in the registry; bad data refused; cancel."""
from __future__ import annotations

import json

import pytest
from conftest import launch_blocks

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    import gradio as gr

    from chatapp.model import ModelRegistry
    from chatapp.settings import Settings
    from finetune.ui import build_finetune_tab

    settings = Settings.from_env(data_dir=tmp_path_factory.mktemp("ft-ui-data"))
    registry = ModelRegistry(settings)
    with gr.Blocks() as demo:
        with gr.Tab("Fine-tune"):
            trainer = build_finetune_tab(settings, registry)
    yield settings, registry, trainer, launch_blocks(demo)
    demo.close()


@pytest.fixture(scope="module")
def page(app, browser):
    page = browser.new_page()
    page.goto(app[3], wait_until="load")
    return page


def fill(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(str(value))
    box.press("Tab")


def type_dataset_path(page, settings, corpus) -> None:
    """Type the path of identity.json copied into the data folder (a path outside it is refused: test_closed_doors)."""
    kept = settings.data_dir / "datasets" / "identity.json"
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_bytes((corpus / "finetune" / "identity.json").read_bytes())
    page.locator("#ft-data input").fill(str(kept))
    page.locator("#ft-data input").press("Enter")


def quick_settings(page, name: str, steps: int) -> None:
    fill(page, "ft-name", name)
    page.locator("#ft-method").get_by_text("lora", exact=True).click()
    fill(page, "ft-max-steps", steps)
    fill(page, "ft-max-length", 64)
    fill(page, "ft-test-size", 0)
    fill(page, "ft-template-vars", "name=Ada,author=Lovelace Labs")
    if page.locator("#ft-forgetting input").is_checked():
        page.locator("#ft-forgetting input").click()


def test_upload_train_and_the_variant_appears(app, page, corpus, artifacts):
    from playwright.sync_api import expect

    settings, registry, trainer, _ = app
    page.locator("#ft-upload input[type=file]").set_input_files(str(corpus / "finetune" / "identity.json"))
    page.wait_for_function("document.querySelector('#ft-status').innerText.includes('Dataset saved')", timeout=30000)
    quick_settings(page, "ui-ada", steps=3)
    page.locator("#ft-start").click()
    page.wait_for_function("document.querySelector('#ft-status').innerText.includes('Training')", timeout=30000)
    page.reload(wait_until="load")  # the run goes on, and the reloaded page shows it (it said "No run yet.")
    expect(page.locator("#ft-status")).to_contain_text("ui-ada", timeout=30000)
    page.wait_for_function("document.querySelector('#ft-status').innerText.includes('Done')", timeout=300000)
    assert "ready" in page.locator("#ft-status").inner_text()
    assert page.locator("#ft-progress-bar").get_attribute("data-share") == "1.000"
    assert page.locator("#ft-loss canvas, #ft-loss svg").count() > 0
    page.screenshot(path=str(artifacts / "finetune-tab.png"), full_page=True)
    assert len(trainer.job.losses) == 3
    assert "ui-ada" in registry.variants()
    card = json.loads((settings.adapters_dir / "ui-ada" / "card.json").read_text())
    assert card["data"]["file"].endswith("identity.json") and card["training"]["steps"] == 3


def test_bad_dataset_is_refused_with_its_reason(app, page, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "hi", "output": "hello"}\n{"instruction": "bye", "output": ""}\n')
    page.locator("#ft-upload input[type=file]").set_input_files(str(bad))
    page.wait_for_function("document.querySelector('#ft-status').innerText.includes('bad.jsonl')", timeout=30000)
    fill(page, "ft-name", "bad")
    page.locator("#ft-start").click()
    page.wait_for_function("document.querySelector('#ft-status').innerText.includes('Not started')", timeout=30000)
    assert "record 2 (line 2): empty response" in page.locator("#ft-status").inner_text()
    assert not (app[0].adapters_dir / "bad").exists()


def test_cancel_stops_the_run_and_saves_nothing(app, page, corpus):
    settings, _, trainer, _ = app
    type_dataset_path(page, settings, corpus)
    quick_settings(page, "ui-cancel", steps=200)
    page.locator("#ft-start").click()
    page.wait_for_function("/step [1-9]/.test(document.querySelector('#ft-status').innerText)", timeout=120000)
    page.locator("#ft-cancel").click()
    page.wait_for_function("document.querySelector('#ft-status').innerText.includes('Cancelled')", timeout=120000)
    assert trainer.job.step < 200
    assert not (settings.adapters_dir / "ui-cancel").exists()


def test_data_fractions_box_trains_one_adapter_per_share_and_plots_them(app, page, corpus, artifacts):
    settings, registry, trainer, _ = app
    type_dataset_path(page, settings, corpus)
    quick_settings(page, "ui-frac", steps=2)
    fill(page, "ft-test-size", 2)  # held-out records: each run's ROUGE-L is the plotted point
    fill(page, "ft-fractions", "0.5,1")
    page.locator("#ft-start").click()
    page.wait_for_function("document.querySelector('#ft-status').innerText.includes('Done')", timeout=600000)
    assert {"ui-frac-50pct", "ui-frac-100pct"} <= set(registry.variants())
    rows = trainer.job.fraction_rows
    assert [r["records"] for r in rows] == [round(89 * 0.5), 89] and all(0 <= r["eval_rougeL"] <= 1 for r in rows)
    plot = page.locator("#ft-fractions-plot")
    plot.scroll_into_view_if_needed()
    page.wait_for_function("document.querySelectorAll('#ft-fractions-plot canvas, #ft-fractions-plot svg').length > 0",
                           timeout=30000)
    assert (settings.runs_dir / "ui-frac-fractions.png").is_file()
    page.screenshot(path=str(artifacts / "finetune-fractions.png"), full_page=True)
