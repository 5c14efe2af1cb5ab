"""The Documents tab in a real browser (Debian chromium via Playwright): upload, progress, list, delete."""
from __future__ import annotations

import re
import shutil

import pytest
from conftest import launch_blocks

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    import gradio as gr

    from chatapp.settings import Settings
    from loaders.store import get_store
    from loaders.ui import build_documents_tab

    settings = Settings.from_env(data_dir=tmp_path_factory.mktemp("ui") / "data", max_upload_mb=1)
    store = get_store(settings)
    with gr.Blocks(title="Documents") as demo:
        with gr.Tab("Documents"):
            build_documents_tab(store, settings)
    yield launch_blocks(demo), store
    demo.close()
    store.close()


@pytest.fixture(scope="module")
def page(app, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app[0], wait_until="load")
    page.wait_for_selector("#upload-files")
    return page


def test_upload_several_files_with_bad_ones(app, page, corpus, tmp_path, artifacts):
    url, store = app
    html = tmp_path / "bbc-1.html"
    shutil.copy(corpus / "html" / "bbc-1.html", html)
    hostile = tmp_path / "hostile.html"  # its text must show as text: no live markup from documents
    hostile.write_text("<html><head><title>Hostile</title></head><body><article><p>Plain words about pelicans "
                       "&lt;img src=x onerror=alert(1)&gt; and more words about pelicans.</p></article></body></html>")
    (tmp_path / "empty.json").write_text("")
    big = tmp_path / "big.txt"
    big.write_text("too big " * 200_000)  # 1.6 MB, over this app's 1 MB limit
    transcript = corpus / "youtube" / "timedtext_sample.xml"
    page.set_input_files("#upload-files input[type=file]", [str(html), str(hostile), str(tmp_path / "empty.json"),
                                                             str(big), str(transcript)])
    log = page.locator("#ingest-log textarea")  # dropped files are stored at once: no button press
    page.wait_for_function("() => document.querySelector('#ingest-log textarea').value.includes('sources stored')",
                           timeout=120_000)
    text = log.input_value()
    assert "ok     bbc-1.html: " in text
    assert "ok     hostile.html: 1 chunks" in text
    assert "ok     timedtext_sample.xml: 1 chunks" in text
    assert "FAILED empty.json: empty file" in text
    assert "FAILED big.txt: " in text and "over the 1 MB upload limit" in text
    assert "3 of 5 sources stored" in text
    table = page.locator("#sources-table")
    table.get_by_text("bbc-1.html").first.wait_for(timeout=10_000)
    assert "timedtext_sample.xml" in table.inner_text() and "empty.json" not in table.inner_text()
    assert {e["source"] for e in store.list_sources()} == {"bbc-1.html", "hostile.html", "timedtext_sample.xml"}
    page.screenshot(path=str(artifacts / "documents-tab-upload.png"), full_page=True)

    # retrieved text is shown as text: the escaped <img> from the page stays characters on screen
    page.click("text=Try a search")
    page.fill("#search-query textarea", "pelicans")
    page.click("#search-button")
    page.wait_for_function("() => document.querySelector('#search-results textarea').value.includes('hostile.html')",
                           timeout=30_000)
    assert "<img src=x onerror=alert(1)>" in page.locator("#search-results textarea").input_value()
    assert page.locator("img[src='x']").count() == 0


def test_delete_a_source(app, page):
    url, store = app
    before = {e["source"] for e in store.list_sources()}
    assert "timedtext_sample.xml" in before
    box = page.locator("#delete-source input")
    box.fill("timedtext_sample.xml")
    box.press("Enter")
    page.click("#delete-button")
    page.wait_for_function("() => document.querySelector('#delete-log textarea').value.includes('Deleted')",
                           timeout=30_000)
    assert page.locator("#delete-log textarea").input_value() == "Deleted timedtext_sample.xml: 1 chunks."
    assert {e["source"] for e in store.list_sources()} == before - {"timedtext_sample.xml"}
    page.wait_for_function("() => !document.querySelector('#sources-table').innerText.includes('timedtext_sample.xml')",
                           timeout=10_000)


def test_upload_office_files_and_search_cites_their_place(app, page, tmp_path):
    import openpyxl
    import pptx

    url, store = app
    book = openpyxl.Workbook()
    book.active.title = "Birds"
    book.active.append(["bird", "colony"])
    book.active.append(["puffin", "Skomer"])
    book.active.append(["gannet", "Bass Rock"])  # row 3
    book.save(tmp_path / "colonies.xlsx")
    deck = pptx.Presentation()
    for title in ("Survey", "Gannets nest on the Bass Rock in spring"):
        deck.slides.add_slide(deck.slide_layouts[5]).shapes.title.text = title
    deck.save(tmp_path / "survey.pptx")
    page.set_input_files("#upload-files input[type=file]", [str(tmp_path / "colonies.xlsx"), str(tmp_path / "survey.pptx")])
    page.wait_for_function("() => document.querySelector('#ingest-log textarea').value.includes('2 of 2 sources stored')",
                           timeout=120_000)
    text = page.locator("#ingest-log textarea").input_value()
    assert "ok     colonies.xlsx: 2 chunks" in text and "ok     survey.pptx: 2 chunks" in text
    if not page.locator("#search-query textarea").is_visible():  # run alone: no earlier test opened it
        page.click("text=Try a search")
    page.fill("#search-query textarea", "Which colony do gannets nest in?")
    page.click("#search-button")
    page.wait_for_function("() => document.querySelector('#search-results textarea').value.includes('colonies.xlsx')",
                           timeout=30_000)
    found = page.locator("#search-results textarea").input_value()
    assert "colonies.xlsx, Birds, row 3" in found and "survey.pptx, slide 2" in found


def test_a_file_dropped_while_another_is_stored_is_stored_too_and_a_reload_shows_the_ingest(app, page, tmp_path):
    """Found walking the app: a second file dropped while the first was being stored was ignored (Gradio's
    default trigger mode), and nothing said so. A reload meanwhile shows the ingest still running."""
    from playwright.sync_api import expect

    url, store = app
    long = tmp_path / "gannet-counts.txt"  # ~700 chunks: seconds of embedding to drop the next file into
    long.write_text(" ".join(f"Count {n}: the survey saw {n} gannets on the west cliff." for n in range(12_000)))
    short = tmp_path / "puffin-note.txt"
    short.write_text("Puffins come back to Skomer in April and leave in August.")
    log = page.locator("#ingest-log textarea")
    page.set_input_files("#upload-files input[type=file]", [str(long)])
    expect(log).to_have_value(re.compile(r"Storing gannet-counts.txt: \d+% \(embedding gannet-counts.txt: \d+/"),
                              timeout=60_000)
    page.set_input_files("#upload-files input[type=file]", [str(short)])
    expect(log).to_have_value(re.compile(r"Storing puffin-note.txt"))
    page.reload(wait_until="load")
    expect(log).to_have_value(re.compile(r"Storing gannet-counts.txt: \d+%"))
    table = page.locator("#sources-table")
    expect(table).to_contain_text("puffin-note.txt", timeout=180_000)
    expect(table).to_contain_text("gannet-counts.txt", timeout=180_000)
    assert {"gannet-counts.txt", "puffin-note.txt"} <= {e["source"] for e in store.list_sources()}
    expect(log).to_have_value(re.compile(r"ok     gannet-counts.txt: \d+ chunks"))


def test_the_upload_endpoint_returns_once_the_files_are_stored(app, tmp_path):
    """Scripts (and bench/soak.py) call the named endpoint and get the log back only when it is all stored."""
    from gradio_client import Client, handle_file

    url, store = app
    note = tmp_path / "tern-note.txt"
    note.write_text("Arctic terns fly from pole to pole every year.")
    log = Client(url, verbose=False).predict([handle_file(str(note))], "", api_name="/upload")
    assert log == "ok     tern-note.txt: 1 chunks\n1 of 1 sources stored, 1 new chunks"
    assert "tern-note.txt" in {e["source"] for e in store.list_sources()}


def test_a_source_left_unfinished_by_a_stopped_app_is_named_and_a_drop_finishes_it(browser, corpus, tmp_path):
    """Walking the app: stop it mid-ingest and start it again; the file was simply missing from the table.
    The log now names it, and dropping it again keeps the chunks already written."""
    import gradio as gr
    from playwright.sync_api import expect
    from test_store_crash import killed_at

    from chatapp.settings import Settings
    from loaders import load
    from loaders.store import get_store
    from loaders.ui import build_documents_tab

    pages = [d.page_content for d in load(corpus / "pdf" / "attention-is-all-you-need.pdf")]
    big = tmp_path / "big-a.txt"  # 300+ chunks: the ingest is killed after its first write batch of 256
    big.write_text("\n\n".join(f"Part {n} of big-a.txt. {page}" for n in range(6) for page in pages))
    data = tmp_path / "data"
    killed_at(data, "edge", [big], stop="embedding big-a.txt: 256/")
    settings = Settings.from_env(data_dir=data)
    store = get_store(settings)
    with gr.Blocks(title="Documents") as demo:
        with gr.Tab("Documents"):
            build_documents_tab(store, settings)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(launch_blocks(demo), wait_until="load")
        log = page.locator("#ingest-log textarea")
        expect(log).to_have_value("Not stored: big-a.txt (256 chunks written): the app stopped while storing it. "
                                  "Drop it again to finish; the chunks written are kept.")
        page.set_input_files("#upload-files input[type=file]", [str(big)])
        expect(log).to_have_value(re.compile(r"^ok     big-a.txt: \d+ chunks \(resumed: 256 were written"), timeout=120_000)
        expect(page.locator("#sources-table")).to_contain_text("big-a.txt")
        assert "Not stored" not in log.input_value()
    finally:
        demo.close()
        store.close()


def test_a_web_address_pasted_and_entered_is_stored(app, page, corpus, tmp_path):
    """Enter in the URL box did nothing: only the button stored a pasted address. The page is served by a
    real HTTP server on this machine (there is no internet here)."""
    import http.server
    import threading
    from functools import partial

    from playwright.sync_api import expect

    url, store = app
    shutil.copy(corpus / "html" / "nytimes-1.html", tmp_path / "sudan.html")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"http://127.0.0.1:{server.server_port}/sudan.html"
    try:
        box = page.locator("#youtube-url textarea, #youtube-url input").first
        box.fill(address)
        box.press("Enter")
        expect(page.locator("#ingest-log textarea")).to_have_value(re.compile(re.escape(f"ok     {address}: ")),
                                                                   timeout=60_000)
        expect(box).to_have_value("")
        expect(page.locator("#sources-table")).to_contain_text(address, timeout=10_000)
        assert address in {e["source"] for e in store.list_sources()}
    finally:
        server.shutdown()
