"""End to end in a real browser: start app.py, upload the paper in Documents, ask in Chat, check the cited page.

Debian chromium driven by Playwright (no browser download is possible here).
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
PDF = "attention-is-all-you-need.pdf"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (make browser)"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    data = tmp_path_factory.mktemp("e2e-data")
    port = free_port()
    log = data / "app.log"
    env = {**os.environ, "CHATAPP_DATA_DIR": str(data), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    env.pop("CHATAPP_AUTH", None)
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"app.py exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"app.py did not answer on {url} within 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        print(log.read_text()[-2000:])


def test_upload_ask_and_see_the_cited_page(app_url, corpus, artifacts):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
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
        browser.close()
