"""kill -9 at the worst moments: a training run (mid-training, and while its adapter is being written)
leaves no half adapter listed and `--resume_from_checkpoint` finishes it; a vote the page confirmed
survives the app being killed. Real processes, real SIGKILL, the real embedded model and SQLite."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, make_tiny_adapter, start_app

from chatapp.generation import GenerationSettings
from chatapp.adapters import adapter_folders
from chatapp.model import ModelRegistry
from chatapp.settings import Settings
from eval.arena import ArenaStore

pytestmark = pytest.mark.slow

IDENTITY_VARS = "name=Ada,author=Lovelace Labs"


def finetune_command(corpus: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "finetune", "--data", str(corpus / "finetune" / "identity.json"), "--name", "me",
            "--template_vars", IDENTITY_VARS, "--method", "lora", "--max_steps", "4", "--save_strategy", "steps",
            "--save_steps", "2", "--max_length", "96", "--per_device_train_batch_size", "2", "--test_size", "0",
            "--forgetting_samples", "2", "--logging_steps", "1", *extra]


def run_until(command: list[str], data: Path, ready, timeout: float = 600) -> subprocess.Popen:
    """Start `command` with `data` as the data folder and SIGKILL it the moment `ready()` is true."""
    env = {**os.environ, "CHATAPP_DATA_DIR": str(data), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"the run ended (rc {process.returncode}) before the moment to kill it"
        assert time.monotonic() < deadline, "the moment to kill never came"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process


def test_a_killed_training_run_lists_no_half_adapter_and_resumes(tmp_path, corpus):
    data = tmp_path / "data"
    settings = Settings.from_env(data_dir=data)
    runs = settings.runs_dir / "me"
    partial = settings.adapters_dir / ".me.partial"

    # 1. killed mid-training, right after its first checkpoint
    run_until(finetune_command(corpus), data, lambda: (runs / "checkpoint-2" / "trainer_state.json").is_file())
    assert adapter_folders(settings) == {} and ModelRegistry(settings).variants() == ["base"]

    # 2. resumed, and killed again while the finished adapter is being written (the forgetting check runs
    #    between saving the weights and renaming the folder into place)
    #    (peft writes the weights, then the config: waiting for both keeps the kill out of that gap, which a
    #    20 ms poll once hit in a fresh-clone CI)
    run_until(finetune_command(corpus, "--resume_from_checkpoint", "latest"), data,
              lambda: (partial / "adapter_model.safetensors").is_file() and (partial / "adapter_config.json").is_file())
    assert (partial / "adapter_config.json").is_file()  # a whole-looking adapter sat there...
    assert ModelRegistry(settings).variants() == ["base"]  # ...and was never a variant

    # 3. resumed to the end: the adapter appears, with every optimizer step counted once
    env = {**os.environ, "CHATAPP_DATA_DIR": str(data), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(finetune_command(corpus, "--resume_from_checkpoint", "latest", "--json"), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ModelRegistry(settings).variants() == ["base", "me"] and not partial.exists()
    card = json.loads((settings.adapters_dir / "me" / "card.json").read_text())
    assert card["training"]["steps"] == 4
    assert not (settings.adapters_dir / "me" / "training_args.bin").exists()  # no pickle in an adapter
    reply = ModelRegistry(settings).generate([{"role": "user", "content": "Who are you?"}], variant="me",
                                             generation=GenerationSettings(max_new_tokens=8))
    assert reply.strip()  # the finished adapter loads under the safetensors-only rule
    logged = [json.loads(line) for line in (runs / "log.jsonl").read_text().splitlines()]
    assert sorted({e["step"] for e in logged if "loss" in e}) == [1, 2, 3, 4]


def test_pickled_adapter_weights_are_refused_and_never_unpickled(tmp_path):
    settings = Settings.from_env(data_dir=tmp_path / "data")
    make_tiny_adapter(settings, seed=3, scale=0.1, name="foreign")
    folder = settings.adapters_dir / "foreign"
    (folder / "adapter_model.safetensors").unlink()
    marker = tmp_path / "unpickled"

    class Payload:  # unpickling this would create `marker`
        def __reduce__(self):
            return (Path.touch, (marker,))

    import pickle

    (folder / "adapter_model.bin").write_bytes(pickle.dumps(Payload()))
    registry = ModelRegistry(settings)
    assert "foreign" in registry.variants()
    with pytest.raises(ValueError, match=r"adapter 'foreign' holds pickled weights \(adapter_model.bin\)"):
        registry.generate([{"role": "user", "content": "hi"}], variant="foreign")
    assert not marker.exists()

    from finetune.merge import merge

    with pytest.raises(ValueError, match="pickled weights"):
        merge("foreign", tmp_path / "merged", settings=settings)
    assert not marker.exists()


def open_arena(browser, url: str):
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(url, wait_until="load")
    page.get_by_role("tab", name="Arena").click()
    page.locator("#arena-prompt textarea").wait_for()
    return page


@pytest.mark.browser
def test_a_confirmed_vote_survives_kill_9(browser, tmp_path, artifacts):
    data = tmp_path / "data"
    data.mkdir()
    settings = Settings.from_env(data_dir=data)
    make_tiny_adapter(settings, seed=1, scale=0.5)
    app, url = start_app(data)
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    try:
        page = open_arena(browser, url)
        box = page.locator("#arena-prompt textarea")
        box.fill("Reply with one word: hello.")
        box.press("Enter")
        page.locator("#vote-a:not([disabled])").wait_for(timeout=240_000)
        page.locator("#vote-a").click()
        page.locator("#arena-reveal", has_text="was").wait_for(timeout=60_000)  # the page confirmed the vote
        app.send_signal(signal.SIGKILL)  # at once: no shutdown hook, no checkpoint
        app.wait()
        assert ArenaStore(settings.arena_db).count() == 1

        app, _ = start_app(data, port=port)
        page = open_arena(browser, url)
        page.locator("#leaderboard [role=row]:not([aria-rowindex='1'])").first.wait_for(timeout=30_000)
        cells = page.locator("#leaderboard [role=row]:not([aria-rowindex='1'])").first.locator("[role=gridcell]")
        assert "1/0/0" in cells.all_inner_texts() or "0/1/0" in cells.all_inner_texts()
        page.screenshot(path=str(artifacts / "arena-vote-after-kill.png"), full_page=True)
    finally:
        app.kill()
        app.wait()


def test_a_second_start_on_a_port_in_use_says_so_at_once_and_leaves_the_first_running(tmp_path):
    """`make run` twice: the second app failed only after its ~15 s start-up, with uvicorn's bind error
    after a log line claiming it was serving. Now it says in one line what is wrong, before loading anything."""
    (tmp_path / "first").mkdir()
    first, url = start_app(tmp_path / "first")
    try:
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        started = time.monotonic()
        second = subprocess.run([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, capture_output=True, text=True,
                                env={**os.environ, "CHATAPP_DATA_DIR": str(tmp_path / "second")}, timeout=120)
        assert second.returncode == 1
        assert second.stderr.strip() == (f"error: port {port} on 127.0.0.1 is in use: is the app already running "
                                         f"(http://127.0.0.1:{port})? Stop it, or pass --port N or set CHATAPP_PORT.")
        assert time.monotonic() - started < 10  # no store, embedder or model was opened first
        assert not (tmp_path / "second").exists()
        assert first.poll() is None
        with urllib.request.urlopen(url + "v1/models", timeout=10) as response:
            assert response.status == 200
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(30)
