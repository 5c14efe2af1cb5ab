"""Which model layer answers: the in-process transformers + PEFT registry, or an OpenAI-compatible server.

Both have the same public surface (`load`, `info`, `variants`, `stream`, `generate`, `settings`, `base`), so
every caller (Chat tab, `chatapp ask`, the API, the arena, `eval score`, `finetune synth`) builds its
registry here and never asks which one it got.
"""
from __future__ import annotations

from chatapp.model import ModelRegistry
from chatapp.remote import RemoteRegistry
from chatapp.settings import Settings


def make_registry(settings: Settings | None = None) -> ModelRegistry | RemoteRegistry:
    """`RemoteRegistry` when CHATAPP_LLM_URL is set, else the in-process `ModelRegistry`."""
    settings = settings or Settings.from_env()
    return RemoteRegistry(settings) if settings.llm_url else ModelRegistry(settings)
