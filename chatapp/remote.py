"""Generation on an external OpenAI-compatible server (vLLM, Ollama, llama.cpp, LM Studio, `transformers serve`).

`RemoteRegistry` has the public surface of `chatapp.model.ModelRegistry` that the app's callers use
(`load`, `info`, `variants`, `stream`, `generate`, `settings`, `base`), so retrieval, prompts, evidence,
the arena and scoring never know which one answers. `chatapp.backends.make_registry` picks one.

- Variants: "base" is CHATAPP_LLM_MODEL (default: the first model the server lists); every other model
  the server lists is a variant under its own id, so vLLM's `--lora-modules NAME=PATH` appear as adapters.
- `reply_prefix` / `required` are how the in-process backend holds the 135M model to the chain-of-thought
  format by writing into its reply. A chat-completions server cannot in general be made to continue a
  reply (`transformers serve` rejects vLLM's `continue_final_message` with a 422), so here they are left to
  the prompt, which asks for the same format; the reply parser copes with a reply that skips it.
- Every failure (unreachable, timeout, refused, an HTTP error) is `LLMServerError`: one line naming the
  URL and the reason. Connect and read timeouts are `llm_timeout`, so nothing hangs.
- The server schedules its own requests (vLLM batches them), so nothing is serialised here.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import openai

from chatapp.generation import GenerationSettings
from chatapp.model import BASE
from chatapp.settings import Settings

log = logging.getLogger("chatapp.remote")
MODELS_TTL_S = 5.0  # how long a model list is reused: new LoRA modules show up within seconds, no restart


class LLMServerError(RuntimeError):
    """The model server failed: the message is one line naming its URL and the reason."""


def _reason(exc: Exception) -> str:
    if isinstance(exc, openai.APITimeoutError):
        return "did not answer in time"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        return f"is unreachable ({text})"
    if isinstance(exc, openai.APIStatusError):
        body = exc.body
        detail = body.get("message") or body.get("detail") if isinstance(body, dict) else None
        detail = detail or exc.message
        return f"refused the request (HTTP {exc.status_code}: {' '.join(str(detail).split())[:300]})"
    return f"failed ({' '.join(str(exc).split())[:300] or type(exc).__name__})"


class RemoteRegistry:
    """The model layer backed by an OpenAI-compatible server at `settings.llm_url`."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()
        if not self.settings.llm_url:
            raise ValueError("CHATAPP_LLM_URL is not set")
        self.url = self.settings.llm_url.rstrip("/")
        timeout = float(self.settings.llm_timeout)
        self.client = openai.OpenAI(
            base_url=self.url,
            # Local servers (transformers serve, Ollama, llama.cpp) need no key, but the client insists on one.
            api_key=self.settings.llm_api_key or "not-needed",
            # openai's own Timeout: the HTTP library under the client changed (httpx, then httpx2 from openai
            # 3.63, which refuses an httpx.Timeout), and openai re-exports the one it is built on.
            timeout=openai.Timeout(timeout, connect=min(timeout, 5.0)),
            max_retries=1,
        )
        self.base: str | None = None  # the served model id behind "base", once known
        self.load_error: str | None = None  # why the server could not be asked last time (the Chat tab says so)
        self.tokenizer = None  # the server tokenizes
        self.precision = "served"
        self.last_reused_tokens = 0
        self._models: tuple[float, list[str]] = (0.0, [])
        self._lock = threading.Lock()

    # -- what the server serves ----------------------------------------------------------------
    def served_models(self, fresh: bool = False) -> list[str]:
        """Model ids the server lists (cached for MODELS_TTL_S). Raises LLMServerError."""
        with self._lock:
            at, ids = self._models
            if fresh or not ids or time.monotonic() - at > MODELS_TTL_S:
                try:
                    ids = [model.id for model in self.client.models.list()]
                except openai.OpenAIError as exc:
                    raise LLMServerError(f"the model server at {self.url} {_reason(exc)}") from None
                self._models = (time.monotonic(), ids)
            return list(ids)

    def load(self) -> "RemoteRegistry":
        """Find the model behind "base": CHATAPP_LLM_MODEL, else the first the server lists."""
        if self.base is None:
            try:
                ids = self.served_models(fresh=True)
                if not ids and not self.settings.llm_model:
                    raise LLMServerError(f"the model server at {self.url} lists no models; set CHATAPP_LLM_MODEL")
            except LLMServerError as exc:
                self.load_error = str(exc)
                raise
            # CHATAPP_LLM_MODEL first: some servers (Ollama) list fewer models than they serve
            self.base, self.load_error = self.settings.llm_model or ids[0], None
        return self

    def info(self) -> dict:
        self.load()
        return {"base": self.base, "precision": self.precision, "device": self.url, "url": self.url,
                "footprint_mb": None}

    def variants(self) -> list[str]:
        """"base" plus every other model the server lists. If the server is down: one line in the log and
        the last list seen (or just "base"), so the page still builds and works."""
        try:
            ids = self.served_models()
            self.load()
        except LLMServerError as exc:
            log.info("%s", exc)  # the app log shows it; a CLI prints only the error that follows
            ids = self._models[1]
        return [BASE, *(i for i in ids if i != self.base)]

    def _model_id(self, variant: str) -> str:
        if variant == BASE:
            return self.load().base
        if variant not in self.variants():
            raise KeyError(f"unknown variant {variant!r}; known: {', '.join(self.variants())}")
        return variant

    # -- generation ----------------------------------------------------------------------------
    def _request(self, messages: list[dict], variant: str, generation: GenerationSettings) -> dict:
        request: dict = {"model": self._model_id(variant), "messages": messages,
                         "max_tokens": int(generation.max_new_tokens)}
        if generation.do_sample:
            request.update(temperature=float(generation.temperature), top_p=float(generation.top_p))
            # Not in OpenAI's schema: vLLM, llama.cpp and Ollama take it; transformers serve refuses it.
            request["extra_body"] = {"top_k": int(generation.top_k)}
        else:
            request["temperature"] = 0.0  # greedy, as the in-process default
        return request

    def stream(
        self, messages: list[dict], variant: str = BASE, generation: GenerationSettings | None = None,
        *, reply_prefix: str = "", required: str | None = None,
    ) -> Iterator[str]:
        """Yield the reply's text pieces as the server sends them; closing the iterator closes the request.
        `reply_prefix` and `required` are not forced here (see the module docstring)."""
        request = self._request(messages, variant, generation or GenerationSettings())
        try:
            response = self.client.chat.completions.create(stream=True, **request)
        except openai.OpenAIError as exc:
            raise LLMServerError(f"the model server at {self.url} {_reason(exc)}") from None
        try:
            for chunk in response:
                for choice in chunk.choices or []:
                    if choice.delta is not None and choice.delta.content:
                        yield choice.delta.content
        except openai.OpenAIError as exc:
            if isinstance(exc, openai.APIConnectionError) and not isinstance(exc, openai.APITimeoutError):
                # The connection dropped mid-reply: openai wraps the transport's error (httpx's or httpx2's).
                cause = exc.__cause__ or exc
                reason = f"broke off the reply ({' '.join(str(cause).split())[:200] or type(cause).__name__})"
            else:
                reason = _reason(exc)
            raise LLMServerError(f"the model server at {self.url} {reason}") from None
        finally:
            response.close()

    def generate(self, messages: list[dict], variant: str = BASE, generation: GenerationSettings | None = None,
                 **reply) -> str:
        return "".join(self.stream(messages, variant, generation, **reply))
