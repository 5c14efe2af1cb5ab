"""Closed doors, tried on the real app: with a login set, every route refuses an anonymous request
(plain HTTP, each route the app serves); paths typed into the page reach nothing outside the data
folder; and from launch through an upload, a chat and a fine-tune the app opens no outbound connection."""
from __future__ import annotations

import json
import os
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, running_app
from starlette.routing import Mount, WebSocketRoute

LOGIN = "ada:lovelace"
OPEN_TO_ALL = {"/login", "/logout"}


def app_routes(data: Path) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, read from the same FastAPI app app.py builds."""
    from app import build_app, build_server
    from chatapp.access import Login
    from chatapp.backends import make_registry
    from chatapp.settings import Settings
    from loaders.store import get_store

    settings = Settings.from_env(data_dir=data, auth=LOGIN)
    store = get_store(settings)
    try:
        registry = make_registry(settings)  # not loaded: listing routes needs no model
        server = build_server(settings, registry, store, build_app(settings, registry, store), Login.parse(LOGIN))
        found = []

        def walk(routes, prefix: str) -> None:
            for route in routes:
                if isinstance(route, Mount):
                    walk(route.routes, prefix + route.path)
                    continue
                if hasattr(route, "original_router"):  # FastAPI >= 0.16x keeps an included router whole
                    walk(route.original_router.routes, prefix + route.include_context.prefix)
                    continue
                path = re.sub(r"\{[^}]+\}", "x", prefix + route.path) or "/"
                methods = ["WEBSOCKET"] if isinstance(route, WebSocketRoute) else sorted(route.methods - {"HEAD"})
                found.extend((method, path) for method in methods)

        walk(server.routes, "")
        return found
    finally:
        store.close()


def status_of(method: str, url: str) -> int:
    request = urllib.request.Request(url, method=method, data=b"{}" if method in ("POST", "PUT", "PATCH") else None,
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_with_a_login_every_route_refuses_an_anonymous_request(tmp_path):
    routes = app_routes(tmp_path / "routes")
    paths = {path for _, path in routes}
    # the page, Gradio's file, upload and queue routes, and the API are all among them
    assert {"/", "/config", "/v1/models", "/v1/chat/completions"} <= paths
    assert any(p.startswith("/gradio_api/file=") for p in paths) and "/gradio_api/queue/join" in paths
    assert len(routes) > 40
    data = tmp_path / "data"
    data.mkdir()
    with running_app(data, env={"CHATAPP_AUTH": LOGIN}) as page:
        base = page.rstrip("/")
        answered = []
        for method, path in routes:
            if path in OPEN_TO_ALL or method == "WEBSOCKET":
                continue
            status = status_of(method, base + path)
            if status not in (401, 403):
                answered.append(f"{method} {path} -> {status}")
        assert answered == []
        # a browser asking for the page is sent to the login form, which alone answers
        request = urllib.request.Request(page, headers={"accept": "text/html"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.url == base + "/login" and b'name="password"' in response.read()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with pytest.raises(urllib.error.HTTPError) as wrong:
            opener.open(base + "/login", data=b"username=ada&password=wrong", timeout=10)
        assert wrong.value.code == 401
        with pytest.raises(urllib.error.HTTPError):
            opener.open(base + "/config", timeout=10)
        with opener.open(base + "/login", data=b"username=ada&password=lovelace", timeout=10):
            pass
        for path in ("/config", "/gradio_api/info"):
            with opener.open(base + path, timeout=10) as response:
                assert response.status == 200
        with opener.open(base + "/logout", timeout=10):
            pass
        with pytest.raises(urllib.error.HTTPError) as after:
            opener.open(base + "/config", timeout=10)
        assert after.value.code == 401


@pytest.mark.browser
def test_signing_in_through_the_page_then_chatting(browser, tmp_path, artifacts):
    data = tmp_path / "data"
    data.mkdir()
    with running_app(data, env={"CHATAPP_AUTH": LOGIN}) as url:
        page = browser.new_page()
        page.goto(url)
        assert page.url.endswith("/login")
        page.fill("#username", "ada")
        page.fill("#password", "nope")
        page.click("#login")
        assert page.locator("#login-error").inner_text() == "Wrong user name or password."
        page.fill("#username", "ada")
        page.fill("#password", "lovelace")
        page.click("#login")
        box = page.locator("#chat-input textarea")
        box.wait_for(timeout=60_000)
        box.fill("What is the learning rate?")
        box.press("Enter")  # the queue's event stream goes through the gate with the session cookie
        page.locator("#chatbot", has_text="No documents are stored yet").wait_for(timeout=120_000)
        page.screenshot(path=str(artifacts / "login-then-chat.png"), full_page=True)


@pytest.mark.browser
def test_paths_typed_into_the_page_stay_inside_the_data_folder(browser, tmp_path, corpus):
    data = tmp_path / "data"
    (data / "datasets").mkdir(parents=True)
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps([{"instruction": "the password is", "output": "hunter2-outside"}]))
    (data / "datasets" / "link.json").symlink_to(secret)  # a link inside that leads out
    with running_app(data) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        for typed in ("/etc/passwd", str(secret), "../secret.json", str(data / "datasets" / "link.json")):
            page.goto(url)  # a fresh page each time: two refusals may read the same
            page.get_by_role("tab", name="Fine-tune").click()
            field = page.locator("#ft-data input")
            field.fill(typed)
            field.press("Enter")
            page.locator("#ft-name input, #ft-name textarea").first.fill("stolen")
            page.locator("#ft-start").click()
            status = page.locator("#ft-status", has_text="Not started")
            status.wait_for(timeout=30_000)
            text = status.inner_text()
            assert "only files inside the data folder or uploaded through the page" in text, text
            assert "root:" not in text and "hunter2" not in text

        page.get_by_role("tab", name="Documents").click()
        page.locator("#youtube-url textarea, #youtube-url input").first.fill("/etc/passwd")
        page.locator("#ingest-button").click()
        log = page.locator("#ingest-log textarea")
        page.wait_for_function("() => document.querySelector('#ingest-log textarea').value.includes('FAILED')",
                               timeout=60_000)
        assert "only web addresses" in log.input_value() and "root:" not in log.input_value()
    from chatapp.settings import Settings
    from loaders.store import get_store

    store = get_store(Settings.from_env(data_dir=data))
    try:
        assert store.is_empty()  # nothing of /etc/passwd was stored
    finally:
        store.close()


SITE_HOOK = '''
import os, sys
_log = open(os.environ["CONNECT_LOG"], "a", buffering=1)
_log.write(f"watching {os.getpid()} {sys.argv!r}\\n")
def _watch(event, args):
    if event == "socket.connect":
        _log.write(f"connect {args[1]!r}\\n")
    elif event == "socket.getaddrinfo":
        _log.write(f"resolve {args[0]!r}\\n")
sys.addaudithook(_watch)
'''


def outbound(lines: list[str]) -> list[str]:
    local = ("'127.0.0.1'", "'::1'", "'localhost'", "'0.0.0.0'", "b'localhost'")
    found = []
    for line in lines:
        kind, _, target = line.partition(" ")
        if target.startswith("'/") or target.startswith("b'/") or target.startswith("'\\x00"):
            continue  # a unix socket: local by definition
        if not any(target.startswith(f"({h}") or target == h for h in local):
            found.append(line)
    return found


@pytest.mark.browser
@pytest.mark.slow
def test_no_outbound_connection_from_launch_through_upload_chat_and_finetune(browser, tmp_path, corpus, artifacts):
    """Python's audit hook sees every socket connect and name lookup the app process makes."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITE_HOOK)
    log = tmp_path / "connections.log"
    data = tmp_path / "data"
    (data / "datasets").mkdir(parents=True)
    shutil.copy(corpus / "finetune" / "identity.json", data / "datasets" / "identity.json")
    env = {"CONNECT_LOG": str(log), "PYTHONPATH": os.pathsep.join([str(hook), str(ROOT)])}
    with running_app(data, env=env) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(url)
        page.get_by_role("tab", name="Documents").click()
        page.locator("#upload-files input[type=file]").set_input_files(str(corpus / "pdf" / "attention-is-all-you-need.pdf"))
        page.wait_for_function("() => document.querySelector('#ingest-log textarea').value.includes('stored')",
                               timeout=300_000)
        page.get_by_role("tab", name="Chat").click()
        box = page.locator("#chat-input textarea")
        box.fill("What label smoothing value was used?")
        box.press("Enter")
        page.locator("#sources", has_text="p.").wait_for(timeout=300_000)
        page.get_by_role("tab", name="Fine-tune").click()
        field = page.locator("#ft-data input")
        field.fill(str(data / "datasets" / "identity.json"))
        field.press("Enter")
        page.locator("#ft-name input, #ft-name textarea").first.fill("offline")
        page.locator("#ft-template-vars input, #ft-template-vars textarea").first.fill("name=Ada,author=Lovelace Labs")
        page.locator("#ft-max-steps input").fill("2")
        page.locator("#ft-test-size input").fill("0")
        page.locator("#ft-start").click()
        page.locator("#ft-status", has_text="Done").wait_for(timeout=600_000)
        assert (data / "adapters" / "offline" / "adapter_model.safetensors").is_file()
    lines = log.read_text().splitlines()
    assert any(line.startswith("watching") and "app.py" in line for line in lines)  # the hook ran in the app
    assert outbound([line for line in lines if not line.startswith("watching")]) == []
