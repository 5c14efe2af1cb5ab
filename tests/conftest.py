"""Shared fixtures: the real corpus, scratch data folders, one converted base model per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
ARTIFACTS = ROOT / "tests" / "artifacts"

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
