"""The Evaluate tab in a real browser (Debian chromium via Playwright) on the real SmolLM2 base and a real
tiny LoRA adapter: score a file, be warned when an adapter was trained on that very file, score the
records the adapter held out instead, and find an adapter trained after the page loaded."""
from __future__ import annotations

import hashlib
import json
import threading

import pytest
from conftest import launch_blocks, make_tiny_adapter

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RECORDS = [{"instruction": q, "input": "", "output": a} for q, a in [
    ("What time does the first ferry leave Pier 3?", "The first ferry leaves Pier 3 at 06:40."),
    ("How much is a return ticket to Skerry Point?", "A return ticket costs 9.50 euros."),
    ("Can I bring my bicycle?", "Yes, bicycles travel free on the lower deck."),
    ("Are dogs allowed on board?", "Dogs on a lead are welcome on the open deck."),
    ("How long is the crossing?", "The crossing takes 25 minutes."),
    ("When does the last ferry return?", "The last ferry leaves Skerry Point at 22:10."),
]]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    import gradio as gr

    from chatapp.model import ModelRegistry
    from chatapp.settings import Settings
    from eval.ui import build_eval_tab

    root = tmp_path_factory.mktemp("eval-ui")
    settings = Settings.from_env(data_dir=root / "data")
    data = root / "ferry-faq.json"
    data.write_text(json.dumps(RECORDS))
    with gr.Blocks() as demo:
        with gr.Tab("Evaluate") as tab:
            build_eval_tab(settings, ModelRegistry(settings), tab=tab)
        with gr.Tab("Fine-tune"):
            gr.Markdown("training happens here")
    yield settings, data, launch_blocks(demo)
    demo.close()


def trained_on(settings, data, name: str) -> None:
    """A real adapter whose card says it was trained on `data`, as `python -m finetune` writes it."""
    make_tiny_adapter(settings, seed=1, scale=0.2, name=name)
    card = {"data": {"file": str(data), "sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
                     "template_vars": {}, "test_size": 0.34, "train_examples": 4},
            "hyperparameters": {"seed": 42}}
    (settings.adapters_dir / name / "card.json").write_text(json.dumps(card))


def test_scoring_the_training_file_warns_and_held_out_records_score_instead(app, browser, artifacts):
    from playwright.sync_api import expect

    settings, data, url = app
    page = browser.new_page(viewport={"width": 1300, "height": 1300})
    page.goto(url, wait_until="load")
    expect(page.locator("#eval-variants")).not_to_contain_text("ferry")
    # the adapter is trained after the page loaded; coming back to the tab offers it
    page.get_by_role("tab", name="Fine-tune").click()
    trained_on(settings, data, "ferry")
    page.get_by_role("tab", name="Evaluate").click()
    page.locator("#eval-variants").get_by_label("ferry").check()
    page.locator("#eval-limit input").fill("2")
    page.locator("#eval-max-new-tokens input[type=number]").fill("8")
    page.locator("#eval-max-new-tokens input[type=number]").press("Enter")

    page.locator("#eval-data input[type=file]").set_input_files(str(data))
    page.locator("#eval-run").click()
    verdicts = page.locator("#eval-verdicts")
    expect(verdicts).to_contain_text("Scored 2 records of ferry-faq.json", timeout=300_000)
    expect(verdicts).to_contain_text("ferry was trained on this file")
    expect(page.locator("#eval-table [role=gridcell]", has_text="base")).to_have_count(1)

    # both a file and an adapter's held-out records: one clear line, nothing run
    page.locator("#eval-held-out input").click()
    page.get_by_role("option", name="ferry").click()
    page.locator("#eval-run").click()
    expect(page.get_by_text("Give one of them")).to_be_visible(timeout=10_000)

    page.locator("#eval-data button[aria-label='Clear']").click()
    expect(page.locator("#eval-data")).not_to_contain_text("ferry-faq.json")
    page.locator("#eval-run").click()
    expect(page.locator("#eval-status")).to_contain_text("Running")
    page.reload(wait_until="load")  # the run goes on, and the reloaded page draws its result (it was lost)
    expect(verdicts).to_contain_text("Scored 2 records held out by ferry", timeout=300_000)
    expect(verdicts).not_to_contain_text("trained on this file")
    expect(page.locator("#eval-table [role=gridcell]", has_text="ferry")).to_have_count(1)
    page.screenshot(path=str(artifacts / "evaluate-held-out.png"), full_page=True)


def test_answers_from_your_documents_are_scored_and_a_reload_keeps_the_run(app, browser, tmp_path):
    """The 'Answers from your documents' section on the real store and model; reloading mid-run used to lose
    its result, though the run went on."""
    from playwright.sync_api import expect

    from loaders.store import get_store

    settings, _, url = app
    page = browser.new_page(viewport={"width": 1300, "height": 1300})
    page.goto(url, wait_until="load")
    # a record that is no question object gets one line naming it (it was "'str' object has no attribute 'get'")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "How long is the crossing?", "answer": "15 minutes"}\n"How long is the crossing?"\n')
    page.locator("#rag-eval-questions input[type=file]").set_input_files(str(bad))
    page.locator("#rag-eval-run").click()
    expect(page.locator(".toast-body").last).to_contain_text("record 2 (line 2) has no question")

    # questions asked while their file is still being stored (dropped in Documents just before) wait for it
    store = get_store(settings)
    note = tmp_path / "ferry-times.txt"
    note.write_text("The first ferry to Skomer leaves Martin's Haven at 10 am. The crossing takes 15 minutes.")
    # The ingest is held at its first progress report until the page has shown the wait: a fast machine
    # stores a small file before the click, and the wait is then never seen.
    storing, release, stored = threading.Event(), threading.Event(), []
    ingest = threading.Thread(target=lambda: stored.extend(store.ingest(
        [note], progress=lambda fraction, message: release.wait(120), started=storing.set)))
    ingest.start()
    assert storing.wait(60)
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"question": "How long does the crossing to Skomer take?", "answer": "15 minutes",
                                     "source": "ferry-times.txt"}) + "\n")
    page.locator("#rag-eval-questions button[aria-label='Clear']").click()
    page.locator("#rag-eval-questions input[type=file]").set_input_files(str(questions))
    page.locator("#rag-eval-run").click()
    expect(page.locator("#rag-eval-status")).to_contain_text("waiting for ferry-times.txt to be stored")
    release.set()
    ingest.join()
    assert [r.ok for r in stored] == [True], stored
    expect(page.locator("#rag-eval-status")).to_contain_text("Running")
    page.reload(wait_until="load")
    row = page.locator("#rag-eval-table [role=gridcell]", has_text="base")
    expect(row).to_have_count(1, timeout=300_000)
    cells = [c.strip() for c in page.locator("#rag-eval-table [role=gridcell]").all_inner_texts()]
    assert cells[:2] == ["base", "1"], cells  # the variant, one question asked
    expect(page.locator("#rag-eval-status")).to_have_text("")
