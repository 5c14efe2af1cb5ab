"""The model layer on the real embedded SmolLM2: conversion, precision, variants on one base, streaming."""
from __future__ import annotations

import json
import resource
import threading
import time

import pytest
import torch
from peft import LoraConfig, PromptTuningConfig, TaskType, get_peft_model

from chatapp import prompts
from chatapp.attention import causal_offset
from chatapp.generation import GenerationSettings
from chatapp.loading import base_folder, load_base
from chatapp.model import BASE, ModelRegistry
from chatapp.settings import Settings

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
SHORT = GenerationSettings(max_new_tokens=12)


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    return Settings.from_env(data_dir=tmp_path_factory.mktemp("model-data"))


def save_adapter(settings: Settings, name: str, config) -> None:
    """A real PEFT adapter with its trainable weights pushed away from their (no-op) initialisation."""
    model, _, _ = load_base(settings)
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.5)
    peft_model.save_pretrained(settings.adapters_dir / name)


@pytest.fixture(scope="module")
def registry(settings) -> ModelRegistry:
    return ModelRegistry(settings).load()


def test_embedded_base_is_converted_to_a_trainable_folder(settings):
    folder = base_folder(settings)
    config = json.loads((settings.models_dir / "SmolLM2-135M-Instruct" / "config.json").read_text())
    assert folder.endswith("SmolLM2-135M-Instruct")
    assert "quantization_config" not in config  # reloads as a plain model that Trainer accepts
    start = time.perf_counter()
    assert base_folder(settings) == folder
    assert time.perf_counter() - start < 1.0  # the conversion runs once


def test_base_answers_and_streams_in_pieces(registry):
    pieces = list(registry.stream(QUESTION, BASE, SHORT))
    assert len(pieces) > 1
    assert "Paris" in "".join(pieces)
    # a piece per token, not per word: the first text shows as soon as the first token is decoded
    tokens = registry.tokenizer("".join(pieces), add_special_tokens=False)["input_ids"]
    assert len(pieces) >= len(tokens) - 1
    info = registry.info()
    assert info["precision"] == "32bit" and info["device"] == "cpu"
    assert 400 < info["footprint_mb"] < 700  # 135M parameters in fp32


def test_new_adapters_appear_without_restart_and_switch_on_one_base(settings, registry):
    assert registry.variants() == [BASE]
    before = registry.generate(QUESTION, BASE, SHORT)
    base_object = registry.base

    save_adapter(settings, "noisy-lora", LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    save_adapter(settings, "soft-prompt", PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=8))
    assert registry.variants() == [BASE, "noisy-lora", "soft-prompt"]

    lora_answer = registry.generate(QUESTION, "noisy-lora", SHORT)
    assert lora_answer != before
    # Prompt tuning only prepends virtual tokens: compare next-token distributions, not text.
    inputs = registry.encode(QUESTION)
    with torch.no_grad(), registry._context("soft-prompt"):
        soft_logits = registry._model_for("soft-prompt")(**inputs).logits[0, -1]
    with torch.no_grad(), registry._context(BASE):
        base_logits = registry._model_for(BASE)(**inputs).logits[0, -1]
    assert not torch.allclose(soft_logits, base_logits, atol=1e-3)

    # Back to base: LoRA layers are switched off, so the answer is exactly the original one.
    assert registry.generate(QUESTION, BASE, SHORT) == before
    assert registry.generate(QUESTION, "noisy-lora", SHORT) == lora_answer
    assert registry.base is base_object  # never reloaded


def test_every_generation_runs_on_the_one_model_thread_whoever_asks(registry):
    """On CPU a second thread running torch ops starts a second OpenMP pool, which slows every op
    (chatapp.model.ModelRegistry); so the model's work stays on one thread, whichever thread asks."""
    seen = set()
    hook = registry.base.register_forward_pre_hook(lambda module, args: seen.add(threading.get_ident()))
    try:
        registry.generate(QUESTION, BASE, SHORT)
        callers = [threading.Thread(target=registry.generate, args=(QUESTION, BASE, SHORT)) for _ in range(2)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()
    finally:
        hook.remove()
    assert seen == {registry._worker.thread.ident}
    assert registry.call(threading.get_ident) == registry._worker.thread.ident


def test_unknown_variant_is_a_clear_error(registry):
    with pytest.raises(KeyError, match="unknown variant 'nope'"):
        registry.generate(QUESTION, "nope", SHORT)


def test_closing_the_stream_stops_generation(registry):
    stream = registry.stream(QUESTION, BASE, GenerationSettings(max_new_tokens=400, do_sample=True, temperature=1.0))
    next(stream)
    start = time.perf_counter()
    stream.close()
    assert time.perf_counter() - start < 2.0
    # the model's thread is free for the next request
    assert registry._worker.submit(lambda: "free").result(timeout=1.0) == "free"


def test_four_bit_nf4_on_cpu(settings):
    model, tokenizer, precision = load_base(settings, precision="4bit")
    assert precision == "4bit"
    full, _, _ = load_base(settings, precision="32bit")
    assert model.get_memory_footprint() < full.get_memory_footprint() / 3
    batch = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    assert tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_bad_precision_is_rejected(settings):
    with pytest.raises(ValueError, match="precision must be one of"):
        load_base(settings, precision="3bit")


def test_reply_prefix_is_continued_and_required_text_is_written_before_the_end(registry):
    plain = registry.generate(QUESTION, BASE, GenerationSettings(max_new_tokens=48))
    assert "Final answer:" not in plain  # the model does not write it by itself ...
    reply = registry.generate(QUESTION, BASE, GenerationSettings(max_new_tokens=48),
                              reply_prefix="Let me think.", required="Final answer:")
    assert reply.startswith("Let me think.")
    assert "Final answer:" in reply  # ... so it was written where the model would have stopped
    assert reply.split("Final answer:", 1)[1].strip()  # and the model went on to answer


def test_cpu_prefill_reuses_freed_memory_instead_of_faulting_in_new_pages(registry):
    """Loading on CPU tunes glibc to keep freed activations: without it this prefill takes ~100k page faults."""
    ids = torch.randint(100, 40000, (1, 1024), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        registry.base(input_ids=ids, logits_to_keep=1)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        registry.base(input_ids=ids, logits_to_keep=1)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 10_000, faults


def test_offset_causal_masks_are_recognised_and_padded_ones_are_not():
    mask = torch.ones(5, 8, dtype=torch.bool).tril(3)[None, None]  # 5 queries after 3 cached positions
    assert causal_offset(mask, 5) == 3
    static = torch.zeros(1, 1, 5, 12, dtype=torch.bool)  # a static cache's unused tail stays masked
    static[..., :8] = mask
    assert causal_offset(static, 5) == 3
    padded = mask.clone()
    padded[..., 0] = False  # a left-padded sequence is not plain causal
    assert causal_offset(padded, 5) == 0
    assert causal_offset(None, 5) == 0 and causal_offset(mask[..., -1:, :], 1) == 0
    assert causal_offset(torch.ones(5, 5, dtype=torch.bool).tril()[None, None], 5) == 0  # nothing cached


def test_a_prompt_that_starts_like_an_earlier_one_reuses_its_prefix_and_answers_the_same(settings, registry, corpus):
    page = (corpus / "html" / "bbc-1.html").read_text()[:3000]
    first = prompts.answer_messages("What is this page about?", [page], "cot")
    second = prompts.answer_messages("Who is named on this page?", [page], "cot")
    ids = [registry.encode(m, "Passage [")["input_ids"][0].tolist() for m in (first, second)]
    shared = next(i for i, (a, b) in enumerate(zip(*ids)) if a != b)
    assert shared > 200  # system prompt, worked example and the page come before the question
    reply = dict(reply_prefix="Passage [", required=prompts.FINAL_MARKER)

    registry.forget_prompts()
    registry.generate(first, BASE, SHORT, **reply)
    assert registry.last_reused_tokens == 0
    reused = registry.generate(second, BASE, SHORT, **reply)
    assert registry.last_reused_tokens == shared
    registry.forget_prompts()
    assert registry.generate(second, BASE, SHORT, **reply) == reused  # same tokens as computing it all
    assert registry.last_reused_tokens == 0

    # the K/V depends on the variant's weights, so one variant never reuses another's
    save_adapter(settings, "reuse-lora", LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    registry.generate(second, "reuse-lora", SHORT, **reply)
    assert registry.last_reused_tokens == 0
    registry.generate(second, "reuse-lora", SHORT, **reply)  # asked again (regenerate): all but the last token
    assert registry.last_reused_tokens == len(ids[1]) - 1
