"""Shared fixtures: the real corpus, scratch data folders, one converted base model per session,
and for the browser tests: Debian chromium, a free port, a Gradio page or the whole app.py served."""
from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")  # Debian's; Playwright cannot download its own browser here
NO_CHROMIUM = "Debian chromium is not installed: apt-get install -y chromium (make browser)"

# The embedded GGUF is converted to safetensors once and shared by every scratch data folder,
# so each test pays for its own data but not for a 30 s conversion.
MODELS_CACHE = Path(os.environ.get("CHATAPP_TEST_MODELS_DIR", Path.home() / ".cache" / "chatapp-tests" / "models"))
os.environ.setdefault("CHATAPP_MODELS_DIR", str(MODELS_CACHE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="session")
def corpus() -> Path:
    assert CORPUS.is_dir(), f"the shared corpus is missing at {CORPUS}"
    return CORPUS


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    """A scratch CHATAPP_DATA_DIR for one test."""
    path = tmp_path / "data"
    path.mkdir()
    monkeypatch.setenv("CHATAPP_DATA_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def highlighted_pixels(jpeg: bytes) -> int:
    """How many pixels of a page picture are the highlighter's yellow (loaders.pages.HIGHLIGHT over white)."""
    r, g, b = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.int16).transpose(2, 0, 1)
    return int(((r > 230) & (g > 200) & (b < 150)).sum())


def pytest_collection_modifyitems(config, items):
    """Tests marked `browser`, or using the `browser` fixture, skip up front (before their app fixtures
    start) when chromium is missing."""
    if CHROMIUM.exists():
        return
    skip = pytest.mark.skip(reason=NO_CHROMIUM)
    for item in items:
        if "browser" in item.keywords or "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.fixture(scope="module")
def browser():
    """Debian chromium launched by Playwright, one per test module (skipped without it: see above)."""
    from playwright.sync_api import expect, sync_playwright

    # Playwright's 5 s default is short on 2 busy cores that also run the model: a real failure still
    # fails, only later.
    expect.set_options(timeout=15_000)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_blocks(demo) -> str:
    """Serve a Gradio Blocks (queue on) on a free local port without blocking; returns its URL."""
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return f"http://127.0.0.1:{port}"


def start_app(data: Path, timeout: float = 120, env: dict[str, str] | None = None,
              port: int | None = None) -> tuple[subprocess.Popen, str]:
    """Start `python app.py` on `port` (default: a free one) with `data` as CHATAPP_DATA_DIR (no login),
    wait until it answers; returns the process and its URL. Its log goes to data/app.log (appended, so a
    restarted app's log follows the killed one's)."""
    port = port or free_port()
    log = data / "app.log"
    full_env = {**os.environ, "CHATAPP_DATA_DIR": str(data), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    full_env.pop("CHATAPP_AUTH", None)
    full_env.update(env or {})
    with open(log, "a") as out:
        process = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=full_env,
                                   stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            pytest.fail(f"app.py exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return process, url
        except urllib.error.HTTPError:  # it answers: a login-only app refuses an anonymous request
            return process, url
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop(process)
            pytest.fail(f"app.py did not answer on {url} within {timeout:g} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


@contextlib.contextmanager
def running_app(data: Path, timeout: float = 120, env: dict[str, str] | None = None) -> Iterator[str]:
    """`start_app`, yielding its URL; stop it afterwards and print the end of its log (data/app.log)."""
    (data / "app.log").unlink(missing_ok=True)
    process, url = start_app(data, timeout, env)
    try:
        yield url
    finally:
        stop(process)
        print((data / "app.log").read_text()[-2000:])


def stop(process: subprocess.Popen, timeout: float = 20) -> None:
    """Ask a server we started to stop; kill it if it does not within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()


def data_with_the_paper(path: Path) -> Path:
    """`path` as a data folder whose store holds the shared PDF, closed again so an app can open it."""
    from chatapp.settings import Settings
    from loaders.store import get_store

    store = get_store(Settings.from_env(data_dir=path))
    results = store.ingest([str(CORPUS / "pdf" / "attention-is-all-you-need.pdf")])
    assert all(r.ok for r in results), [r.summary() for r in results]
    store.close()  # the app opens the embedded store itself: one process at a time
    return path


def make_tiny_adapter(settings, seed: int, scale: float, name: str = "tiny") -> None:
    """A real LoRA adapter (r=2 on q/v) on the base, nudged off its no-op initialisation by seeded noise
    times `scale` so its answers differ from the base; saved as settings.adapters_dir / name."""
    import torch
    from peft import LoraConfig, get_peft_model

    from chatapp.loading import load_base

    model, _, _ = load_base(settings)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * scale)
    peft_model.save_pretrained(settings.adapters_dir / name)
