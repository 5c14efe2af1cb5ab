"""Generation on an external OpenAI-compatible server: a real `transformers serve` subprocess on a free
loopback port, serving the embedded model's converted folder, and the app's model layer pointed at it."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai
import pytest
from conftest import ROOT, data_with_the_paper, free_port, running_app, stop

from chatapp.backends import make_registry
from chatapp.generation import GenerationSettings
from chatapp.loading import base_folder
from chatapp.model import BASE
from chatapp.remote import LLMServerError, RemoteRegistry
from chatapp.settings import Settings

PDF = "attention-is-all-you-need.pdf"
QUESTION = "How many warmup steps were used?"
SHORT = GenerationSettings(max_new_tokens=8)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory, corpus):
    return data_with_the_paper(tmp_path_factory.mktemp("remote-data"))


@contextlib.contextmanager
def transformers_serve(log: Path):
    """`transformers serve` of the embedded model's folder on a free port: (its /v1 URL, model id, process)."""
    folder = base_folder(Settings.from_env())
    port = free_port()
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "transformers.cli.transformers", "serve", folder, "--host", "127.0.0.1",
             "--port", str(port), "--device", "cpu"],
            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"transformers serve exited:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"transformers serve did not come up:\n{log.read_text()[-3000:]}"
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1", folder, process
    finally:
        stop(process)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The module's `transformers serve`: (its /v1 URL, the model id it serves, its log file)."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with transformers_serve(log) as (url, folder, _):
        yield url, folder, log


def requests_seen(log: Path) -> int:
    return log.read_text().count("POST /v1/chat/completions")


def test_make_registry_picks_the_server_when_a_url_is_set(server, tmp_path):
    url, folder, log = server
    registry = make_registry(Settings.from_env(data_dir=tmp_path, llm_url=url))
    assert isinstance(registry, RemoteRegistry)
    assert registry.variants() == [BASE]  # the one model the server lists is "base"
    assert registry.load().base == folder and registry.info()["url"] == url
    before = requests_seen(log)
    pieces = list(registry.stream([{"role": "user", "content": "Say hello."}], BASE, SHORT))
    assert len(pieces) > 1 and "".join(pieces).strip()
    assert requests_seen(log) == before + 1
    with pytest.raises(KeyError):
        registry.generate([{"role": "user", "content": "hi"}], "no-such-model", SHORT)


def test_chatapp_ask_answers_with_sources_generated_on_the_server(server, data):
    url, _, log = server
    before = requests_seen(log)
    env = {**os.environ, "CHATAPP_DATA_DIR": str(data), "CHATAPP_LLM_URL": url}
    done = subprocess.run([sys.executable, "-m", "chatapp", "ask", QUESTION, "--json", "--max-new-tokens", "24"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["status"] == "answered" and record["answer"].strip()
    assert (PDF, 7) in {(s["source"], s["page"]) for s in record["sources"]}
    assert requests_seen(log) == before + 1, log.read_text()[-2000:]  # the server's log shows the request
    assert "[Request received]" in log.read_text()


def test_the_api_answers_from_the_server_too(server, data):
    url, _, log = server
    before = requests_seen(log)
    with running_app(data, env={"CHATAPP_LLM_URL": url, "CHATAPP_API_KEY": "k"}) as page:
        client = openai.OpenAI(base_url=page.rstrip("/") + "/v1", api_key="k", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list()] == ["base"]
        completion = client.chat.completions.create(model="base", messages=[{"role": "user", "content": QUESTION}],
                                                    max_tokens=16)
    assert completion.choices[0].message.content.strip()
    assert (PDF, 7) in {(s["source"], s["page"]) for s in completion.model_extra["sources"]}
    assert requests_seen(log) == before + 1


def test_an_unreachable_server_is_one_line_naming_it_with_no_hang(data, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    registry = RemoteRegistry(Settings.from_env(data_dir=tmp_path, llm_url=url, llm_timeout=5))
    start = time.perf_counter()
    assert registry.variants() == [BASE]  # a warning, and the page can still be built
    with pytest.raises(LLMServerError) as caught:
        registry.generate([{"role": "user", "content": "hi"}], BASE, SHORT)
    assert time.perf_counter() - start < 15
    message = str(caught.value)
    assert url in message and "unreachable" in message and "\n" not in message

    env = {**os.environ, "CHATAPP_DATA_DIR": str(data), "CHATAPP_LLM_URL": url}
    done = subprocess.run([sys.executable, "-m", "chatapp", "ask", QUESTION], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and url in lines[0], done.stderr[-2000:]

    with running_app(data, env={"CHATAPP_LLM_URL": url, "CHATAPP_LLM_TIMEOUT": "5"}) as page:
        with urllib.request.urlopen(page, timeout=10) as response:  # the page still comes up
            assert response.status == 200
        client = openai.OpenAI(base_url=page.rstrip("/") + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="base", messages=[{"role": "user", "content": QUESTION}], max_tokens=8)
        assert caught.value.status_code == 502 and url in caught.value.message


def test_a_server_that_dies_mid_reply_is_one_line_saying_so(tmp_path):
    with transformers_serve(tmp_path / "serve.log") as (url, _, process):
        registry = RemoteRegistry(Settings.from_env(data_dir=tmp_path, llm_url=url, llm_timeout=30))
        pieces = registry.stream([{"role": "user", "content": "Write a long story about a lighthouse."}], BASE,
                                 GenerationSettings(max_new_tokens=400))
        assert next(pieces)  # the reply has begun
        process.kill()
        with pytest.raises(LLMServerError) as caught:
            for _ in pieces:
                pass
    message = str(caught.value)
    assert url in message and "broke off the reply" in message and "\n" not in message
