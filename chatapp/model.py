"""The chat model registry: one base in memory, adapters attached to it, token streaming.

Loading the base is chatapp/loading.py, the prefix-reuse attention chatapp/attention.py, the model's
thread chatapp/worker.py, the adapter folders chatapp/adapters.py; this module owns the variants ("base" +
every adapter under DATA/adapters/) and generation. Nothing here knows about retrieval or prompts.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StaticCache,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from chatapp.adapters import adapter_folders, check_safetensors
from chatapp.attention import PREFIX_ATTENTION
from chatapp.generation import GenerationSettings
from chatapp.loading import BUILDING, base_folder, load_base
from chatapp.settings import EMBEDDED_BASE, Settings
from chatapp.worker import ModelThread

BASE = "base"

# ---------------------------------------------------------------------------------------------
# Reusing the KV of a prompt prefix seen before (system prompt, worked examples, a regenerated question)

REUSE_MIN_TOKENS = 64  # shorter shared prefixes save less than copying them costs
REMEMBERED_PROMPTS = 4  # ~46 KB of KV a token for the 135M model: four 1.5k-token prompts are ~270 MB


@dataclass
class _PromptKV:
    variant: str
    ids: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]


def _shared_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


class _Cancelled(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        return self.event.is_set()


class _NoEndBefore(LogitsProcessor):
    """Keeps a reply from ending before `text` is in it: where the model would stop (end-of-sequence is its
    top choice), `text` is written on a new line instead and generation goes on; until then the end token
    cannot be sampled. Batch size 1, as the app generates."""

    def __init__(self, tokenizer, text: str, prompt_length: int, eos_ids: list[int]):
        self.tokenizer, self.text, self.prompt_length = tokenizer, text, prompt_length
        self.forced = tokenizer("\n" + text, add_special_tokens=False)["input_ids"]
        self.eos = torch.tensor(eos_ids)
        self.queue: list[int] = []
        self.seen = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.seen:
            return scores
        if not self.queue:
            if int(scores[0].argmax()) not in self.eos:
                scores[:, self.eos] = float("-inf")
                return scores
            written = self.tokenizer.decode(input_ids[0, self.prompt_length:], skip_special_tokens=True)
            if self.text.lower() in written.lower():
                self.seen = True
                return scores
            self.queue = list(self.forced)
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.queue.pop(0)] = 0
        self.seen = not self.queue
        return forced


class _TokenStreamer(TextIteratorStreamer):
    """Hands over each token's text as soon as it is decoded.

    TextIteratorStreamer holds text back until a space, so a reply starting "Passage [4] says" shows
    nothing for its first three tokens (~0.15 s on CPU). Byte-level BPE text never changes once
    decoded, so the only thing to hold back is a character split across tokens (decoded as U+FFFD).
    """

    def put(self, value: torch.Tensor) -> None:
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.token_cache.extend(value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
        if text.endswith("\ufffd"):
            return
        self.on_finalized_text(text[self.print_len:])
        if text.endswith("\n"):  # start afresh, so decoding stays short on long replies
            self.token_cache, self.print_len = [], 0
        else:
            self.print_len = len(text)



class ModelRegistry:
    """One base model in memory; adapters attach to it with PEFT's multi-adapter API.

    LoRA-family adapters share one PeftModel (switching is `set_adapter`). Prompt-tuning adapters
    wrap the same base object in their own PeftModel (PEFT cannot mix prompt learning with LoRA in
    one model), so the base weights are still loaded exactly once.
    """

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()
        self._load_lock = threading.Lock()
        # Every torch op of the model (load, adapters, generation) runs on this one thread, which also
        # makes it one generation at a time. On CPU, OpenMP (libgomp) keeps a pool of threads for each
        # thread that ever ran a parallel op, as long as that thread lives; with two pools on two cores it
        # throttles its spin-wait, every op then waits for a futex wake-up, and decode measured 16 instead
        # of 23 tokens/s when the base was loaded on one thread and generated on another (a new one each
        # answer, as before). The caller's threads only tokenize.
        self._worker = ModelThread()
        self.base = None
        self.tokenizer = None
        self.precision = None
        self.load_error: str | None = None  # why the last load failed (the Chat tab says so); None once loaded
        self._lora = None  # PeftModel holding every LoRA-family adapter
        self._prompt_models: dict[str, object] = {}
        self._remembered: list[_PromptKV] = []  # newest last
        self.last_reused_tokens = 0  # prompt tokens the last generation took from an earlier prompt

    # -- the model's thread ----------------------------------------------------------------------
    def call(self, fn: Callable, /, *args, **kwargs):
        """Run `fn(*args, **kwargs)` on the model's thread (see __init__), after any generation in
        progress, and return its result. Benchmarks time plain `generate` this way, beside the app's."""
        if threading.current_thread() is self._worker.thread:
            return fn(*args, **kwargs)
        return self._worker.submit(fn, *args, **kwargs).result()

    # -- loading -------------------------------------------------------------------------------
    def load(self) -> "ModelRegistry":
        with self._load_lock:
            if self.base is None:
                try:
                    # SDPA that keeps its causal kernel when a prompt continues a cached prefix (chatapp/attention.py)
                    self.base, self.tokenizer, self.precision = self.call(load_base, self.settings,
                                                                          attention=PREFIX_ATTENTION)
                except Exception as exc:  # an id the hub cannot serve offline, a broken folder: tried again next time
                    self.load_error = " ".join(str(exc).split()) or type(exc).__name__
                    raise
                self.load_error = None
        return self

    @property
    def device(self) -> torch.device:
        return next(self.load().base.parameters()).device

    def info(self) -> dict:
        self.load()
        return {
            "base": base_folder(self.settings) if self.settings.base_model == EMBEDDED_BASE else self.settings.base_model,
            "precision": self.precision,
            "device": str(self.device),
            "footprint_mb": round(self.base.get_memory_footprint() / 2**20, 1),
        }

    def variants(self) -> list[str]:
        """"base" plus every adapter on disk, rescanned each call so new adapters need no restart."""
        return [BASE, *adapter_folders(self.settings)]

    def _model_for(self, variant: str):
        """The module to call for a variant; attaches the adapter on first use."""
        self.load()
        if variant == BASE:
            return self.base
        folders = adapter_folders(self.settings)
        if variant not in folders:
            raise KeyError(f"unknown variant {variant!r}; known: {', '.join(self.variants())}")
        if variant in self._prompt_models:
            return self._prompt_models[variant]
        from peft import PeftConfig, PeftModel

        path = folders[variant]
        check_safetensors(variant, path)
        config = PeftConfig.from_pretrained(path)
        with self._load_lock, BUILDING:  # a training run may be building its model meanwhile
            if config.is_prompt_learning:
                if variant not in self._prompt_models:
                    self._prompt_models[variant] = PeftModel.from_pretrained(self.base, path, adapter_name=variant).eval()
                return self._prompt_models[variant]
            if self._lora is None:
                self._lora = PeftModel.from_pretrained(self.base, path, adapter_name=variant).eval()
            elif variant not in self._lora.peft_config:
                self._lora.load_adapter(path, adapter_name=variant)
            self._lora.set_adapter(variant)
            return self._lora

    def _context(self, variant: str):
        """LoRA layers live inside the base modules once any LoRA adapter is attached, so every
        variant that is not a LoRA adapter must run with them switched off."""
        import contextlib

        if self._lora is not None and (variant == BASE or variant in self._prompt_models):
            return self._lora.disable_adapter()
        return contextlib.nullcontext()

    # -- generation ----------------------------------------------------------------------------
    def encode(self, messages: list[dict], reply_prefix: str = "") -> dict:
        """Token ids of the chat, ending where the assistant's reply starts (after `reply_prefix`, if any)."""
        self.load()
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        batch = self.tokenizer(text + reply_prefix, add_special_tokens=False, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def stream(
        self, messages: list[dict], variant: str = BASE, generation: GenerationSettings | None = None,
        *, reply_prefix: str = "", required: str | None = None,
    ) -> Iterator[str]:
        """Yield text pieces as the model produces them. Closing the iterator stops generation.

        `reply_prefix` starts the reply for the model (and is part of the text yielded, with the first new
        piece); `required` is text the reply may not end without (see _NoEndBefore).
        """
        generation = generation or GenerationSettings()
        inputs = self.encode(messages, reply_prefix)
        ids = inputs["input_ids"][0].tolist()
        streamer = _TokenStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                  clean_up_tokenization_spaces=False)
        cancel = threading.Event()

        def run() -> None:  # on the model's thread
            try:
                model = self._model_for(variant)
                processors = LogitsProcessorList()
                if required:
                    eos = model.generation_config.eos_token_id
                    eos = [eos] if isinstance(eos, int) else list(eos or [self.tokenizer.eos_token_id])
                    processors.append(_NoEndBefore(self.tokenizer, required, len(ids), eos))
                with self._context(variant), torch.inference_mode():
                    if variant in self._lora_names():
                        self._lora.set_adapter(variant)
                    # The default dynamic cache re-concatenates every layer's K/V on each token (56% of a
                    # CPU decode step at 1.5k tokens); a static cache writes in place. Prompt-tuning
                    # variants prepend virtual tokens, so they keep transformers' own cache.
                    cache = None
                    if variant not in self._prompt_models:
                        cache = self._cache_for(model, variant, ids, generation.max_new_tokens)
                    model.generate(
                        **inputs,
                        **generation.to_generate_kwargs(),
                        cache=cache,
                        streamer=streamer,
                        logits_processor=processors,
                        pad_token_id=self.tokenizer.pad_token_id,
                        stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]),
                    )
                    if cache is not None:
                        self._remember(variant, ids, cache)
            except BaseException:  # handed to the caller's thread by running.exception() below
                streamer.end()
                raise

        running = self._worker.submit(run)
        pending = reply_prefix  # sent with the first new piece, so it never looks like a generated token
        try:
            for piece in streamer:
                if piece:
                    yield pending + piece
                    pending = ""
        finally:
            cancel.set()
            # A generation still queued behind another never starts; else wait until the model's thread is done.
            error = None if running.cancel() else running.exception()
        if error is not None:
            raise error

    def generate(self, messages: list[dict], variant: str = BASE, generation: GenerationSettings | None = None,
                 **reply) -> str:
        return "".join(self.stream(messages, variant, generation, **reply))

    def _cache_for(self, model, variant: str, ids: list[int], max_new_tokens: int) -> StaticCache:
        """A static cache for this prompt, holding the K/V of the longest prefix it shares with a prompt
        this variant ran before (at least REUSE_MIN_TOKENS), so that part is not computed again.
        The last prompt token is always run: its logits give the first new token."""
        cache = StaticCache(config=model.config, max_cache_len=len(ids) + int(max_new_tokens))
        shared, best = 0, None
        for entry in self._remembered:
            if entry.variant == variant:
                length = min(_shared_length(entry.ids, ids), len(ids) - 1)
                if length > shared:
                    shared, best = length, entry
        if best is not None and shared >= REUSE_MIN_TOKENS:
            for index, (keys, values) in enumerate(best.layers):
                cache.update(keys[:, :, :shared], values[:, :, :shared], index)
            self.last_reused_tokens = shared
        else:
            self.last_reused_tokens = 0
        return cache

    def _remember(self, variant: str, ids: list[int], cache: StaticCache) -> None:
        """Keep this prompt's K/V (not the reply's) for the next prompts that start the same way."""
        if len(ids) < REUSE_MIN_TOKENS or not cache.layers or not getattr(cache.layers[0], "is_initialized", False):
            return
        layers = [(layer.keys[:, :, :len(ids)].clone(), layer.values[:, :, :len(ids)].clone()) for layer in cache.layers]
        self._remembered = [e for e in self._remembered if not (e.variant == variant and e.ids == ids)]
        self._remembered = [*self._remembered, _PromptKV(variant, ids, layers)][-REMEMBERED_PROMPTS:]

    def forget_prompts(self) -> None:
        """Drop remembered prompt K/V, so the next generation computes its whole prompt."""
        self._remembered = []

    def _lora_names(self) -> set[str]:
        return set(self._lora.peft_config) if self._lora is not None else set()



if __name__ == "__main__":  # python -m chatapp.model: convert/load the base and print what was loaded
    print(json.dumps(ModelRegistry().info(), indent=2))
