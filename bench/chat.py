"""Chat latency: time to first token and decode speed for a RAG question with a ~1,500-token prompt.

    python bench/chat.py [--runs 5] [--max-new-tokens 64] [--cpu-precision 16bit] [--out bench/results]
    python bench/chat.py --api [--runs 5]     # the /v1 API's first token against the in-process answer's

CPU arm (always): the embedded SmolLM2-135M, the app's path (`chatapp.rag.answer`: retrieval from a
scratch store holding the shared PDF, prompt, streaming) against plain `model.generate` on the same
prompt tokens, in the same run.
GPU arm (when CUDA is available): a random-weights model of the same shape, placed as the app places
it (4-bit NF4 by default), the app's streaming path (`ModelRegistry.stream`) against plain `generate`.

API arm (--api, instead of the others): the same question, on the same loaded model, answered in-process
(`rag.answer`, what the Chat tab streams) and through the /v1 API (chatapp/api.py served by uvicorn on a
loopback port, streamed with the `openai` SDK), alternating which goes first; the prompt K/V is forgotten
before each, so both compute the whole prompt.

Targets: CPU first token <= 2 s and >= 15 tokens/s; GPU >= 10x plain generate for decode and first
token <= 200 ms; the API's first token within 10% of the in-process one's. Results go to
OUT/chat-<device>.json and .txt (chat-cpu-16bit.* for --cpu-precision 16bit, chat-api.* for --api).
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers.generation.streamers import BaseStreamer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import matrix_units  # noqa: E402  (bench/machine.py, beside this script)

from chatapp import prompts, rag  # noqa: E402
from chatapp.attention import PREFIX_ATTENTION  # noqa: E402
from chatapp.generation import GenerationSettings  # noqa: E402
from chatapp.loading import base_folder  # noqa: E402
from chatapp.model import BASE, ModelRegistry  # noqa: E402
from chatapp.settings import Settings  # noqa: E402

PDF = ROOT.parent / "shared" / "corpus" / "pdf" / "attention-is-all-you-need.pdf"
QUESTION = "How many warmup steps were used when training the Transformer, and what optimizer was used?"
# A different question each CPU run: the app reuses the K/V of a prompt prefix it has seen, so asking the
# same question again would time a near-empty prefill. Different questions share only what real ones do.
QUESTIONS = [
    QUESTION,
    "What BLEU score did the big Transformer model get on English-to-German translation?",
    "How many attention heads and layers does the base model use?",
    "How long did it take to train the big model, and on what hardware?",
    "What is the dimension of the keys and values in multi-head attention?",
    "Which regularization methods were used during training?",
    "How does self-attention compare with recurrent layers in computational complexity?",
    "What were the results on English constituency parsing?",
]
TARGET_PROMPT_TOKENS = 1500


class Clock(BaseStreamer):
    """Timestamps of each `put` from plain `generate`: the first is the prompt, then one per new token."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def plain_generate(registry, model, inputs: dict, new_tokens: int, **kwargs) -> dict:
    """Plain `model.generate` (greedy, exactly `new_tokens` tokens): first token and decode rate.

    It runs on the registry's model thread, where the app's generation runs too: on CPU, torch ops
    from a second thread would start a second OpenMP pool, which slows every op on both (see
    chatapp.model.ModelRegistry), and busy cores made main-thread generate 5x slower than a worker
    thread's in an earlier run, which would flatter either arm for the wrong reason.
    """
    clock = Clock()

    def run() -> None:
        model.set_attn_implementation("sdpa")  # transformers' own attention, not the app's prefix-aware one
        try:
            with torch.inference_mode():
                model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                               streamer=clock, pad_token_id=model.generation_config.pad_token_id, **kwargs)
        finally:
            model.set_attn_implementation(PREFIX_ATTENTION)  # as the registry loaded it
            sync(model.device)

    sync(model.device)
    start = time.perf_counter()
    registry.call(run)
    new = clock.times[1:]  # [0] is the prompt being handed over
    return {"first_token_s": new[0] - start, "tokens": len(new),
            "decode_tok_s": (len(new) - 1) / (new[-1] - new[0]) if len(new) > 1 else float("nan")}


def timed_stream(pieces, tokenizer, start: float, growing: bool = False, prefix: str = "") -> dict:
    """First-visible-text time and decode rate of a stream of text pieces, or of growing Answers.

    `prefix` is reply text the app wrote for the model (it arrives with the first generated piece):
    its tokens are not counted as decoded."""
    first = last = None
    text = ""
    for piece in pieces:
        last = time.perf_counter()
        text = piece.raw if growing else text + piece
        if text and first is None:
            first = last
    tokens = len(tokenizer(text.removeprefix(prefix), add_special_tokens=False)["input_ids"])
    return {"first_token_s": (first or last) - start, "tokens": tokens,
            "decode_tok_s": (tokens - 1) / (last - first) if first and last > first and tokens > 1 else float("nan")}


def median_row(rows: list[dict]) -> dict:
    return {key: round(statistics.median(r[key] for r in rows), 3) for key in rows[0]}


def diagnose(registry, inputs: dict, new_tokens: int) -> dict:
    """Where the CPU time goes, and what the candidate fixes buy, on the same prompt in the same run."""
    profiles = registry.call(profile_steps, registry.base, inputs)
    return {**profiles, "plain_generate_static_cache": plain_generate(registry, registry.base, inputs, new_tokens,
                                                                      cache_implementation="static")}


def profile_steps(model, inputs: dict) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        out = model(**inputs, use_cache=True, logits_to_keep=1)
        step = {"input_ids": inputs["input_ids"][:, -1:], "past_key_values": out.past_key_values, "use_cache": True}
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                model(**step)
                out.past_key_values.crop(-1)  # drop the step just added: every step sees the same cache
        with profile(activities=[ProfilerActivity.CPU]) as prefill_prof:
            model(**inputs, logits_to_keep=1)

    def shares(p) -> dict:
        events = p.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:4]
        return {e.key: round(e.self_cpu_time_total / total, 3) for e in top}

    return {"decode_step_self_time_share": shares(prof), "prefill_self_time_share": shares(prefill_prof)}


def perplexity(model, tokenizer, pages: list[str], windows: int = 6, length: int = 512) -> float:
    """Perplexity on `windows` spans of `length` tokens of real text, so a precision's speed is shown beside
    what it does to the model."""
    import math

    ids = tokenizer("\n".join(pages), return_tensors="pt")["input_ids"].to(model.device)
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, windows * length, length):
            span = ids[:, start:start + length]
            total += model(input_ids=span, labels=span).loss.item() * (span.shape[1] - 1)
            count += span.shape[1] - 1
    return round(math.exp(total / count), 3)


def choose_k(store, registry, question: str, style: str) -> tuple[int, int]:
    """The number of passages that brings the prompt closest to ~1,500 tokens."""
    best = (1, 0)
    for k in range(1, 13):
        passages = rag.retrieve(store, question, k, 0.0)
        messages = prompts.answer_messages(question, [p.text for p in passages], style)
        count = registry.encode(messages, prompts.reply_prefix(style))["input_ids"].shape[1]
        if abs(count - TARGET_PROMPT_TOKENS) < abs(best[1] - TARGET_PROMPT_TOKENS):
            best = (k, count)
        if count >= TARGET_PROMPT_TOKENS:
            break
    return best


def reference_gflops(dtype: torch.dtype = torch.float32) -> float:
    """GFLOPS of one prefill-shaped matmul (1,424 x 576 x 1,536). This shared VM's speed drifts by a third
    over an hour, so the state it was in is printed beside the times it gave; bf16 against fp32 shows
    what the CPU's matrix units give the 16bit setting."""
    x, w = torch.randn(1424, 576, dtype=dtype), torch.randn(1536, 576, dtype=dtype)
    for _ in range(3):
        torch.nn.functional.linear(x, w)
    start = time.perf_counter()
    for _ in range(20):
        torch.nn.functional.linear(x, w)
    return round(20 * 2 * 1424 * 576 * 1536 / (time.perf_counter() - start) / 1e9)


def environment(run) -> dict:
    """`run` calls a function on the model's thread, so the reference matmul starts no second OpenMP pool."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "matrix_units": matrix_units(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m_before": round(os.getloadavg()[0], 2),
        "matmul_gflops_before": run(reference_gflops),
        "bf16_matmul_gflops_before": run(reference_gflops, torch.bfloat16),
        "torch": torch.__version__,
    }


def cpu_arm(runs: int, max_new_tokens: int, style: str, with_diagnosis: bool, precision: str) -> dict:
    from loaders.store import get_store

    data = Path(tempfile.mkdtemp(prefix="bench-chat-"))
    try:
        # score_threshold 0 so the prompt reaches the benchmark's size whatever the scores are
        # the converted base is shared with the app's models folder, so it is not converted again here
        settings = Settings.from_env(data_dir=data, score_threshold=0.0, models_dir=Settings.from_env().models_dir,
                                     precision=precision)
        registry = ModelRegistry(settings)
        env = environment(registry.call)
        registry.load()
        store = get_store(settings)
        store.ingest([str(PDF)])
        generation = GenerationSettings(max_new_tokens=max_new_tokens)
        app_rows, plain_rows, prompt_sizes, reused = [], [], [], []
        for run in range(runs + 1):  # the first round warms up and is not counted
            question = QUESTIONS[run % len(QUESTIONS)]
            k, prompt_tokens = choose_k(store, registry, question, style)
            start = time.perf_counter()
            retrieved = rag.retrieve(store, question, k, 0.0)
            retrieval_s = time.perf_counter() - start
            inputs = registry.encode(prompts.answer_messages(question, [p.text for p in retrieved], style),
                                     prompts.reply_prefix(style))
            start = time.perf_counter()
            app = timed_stream(
                rag.answer(question, [], store=store, registry=registry, style=style, generation=generation,
                           k=k, settings=settings),
                registry.tokenizer, start, growing=True, prefix=prompts.reply_prefix(style),
            )
            # the same number of tokens from plain generate, so decode rates compare like for like
            plain = plain_generate(registry, registry.base, inputs, max(app["tokens"], 2))
            if run:
                app_rows.append(app)
                plain_rows.append(plain)
                prompt_sizes.append(prompt_tokens)
                reused.append(registry.last_reused_tokens)
            print(f"  run {run}{' (warm-up)' if not run else ''}: {prompt_tokens} prompt tokens, "
                  f"{registry.last_reused_tokens} reused, retrieval {retrieval_s:.3f} s: app {app}  plain {plain}",
                  flush=True)
        diagnosis = diagnose(registry, inputs, max(app_rows[0]["tokens"], 2)) if with_diagnosis else None
        from loaders.documents import load

        quality = {"perplexity_on_the_pdf_3072_tokens": registry.call(
            perplexity, registry.base, registry.tokenizer, [page.page_content for page in load(PDF)])}
        env["load_average_1m_after"] = round(os.getloadavg()[0], 2)
        env["matmul_gflops_after"] = registry.call(reference_gflops)
        store.close()
        return {"diagnosis": diagnosis, "quality": quality,
            "device": "cpu", "model": "SmolLM2-135M-Instruct (embedded)", "precision": registry.precision,
            "style": style, "prompt_tokens": prompt_sizes, "reused_prompt_tokens": reused,
            "runs": runs, "app": median_row(app_rows), "plain_generate": median_row(plain_rows),
            "targets": {"first_token_s": 2.0, "decode_tok_s": 15.0}, "environment": env,
        }
    finally:
        shutil.rmtree(data, ignore_errors=True)


def gpu_arm(runs: int, max_new_tokens: int, precision: str) -> dict:
    """Random weights of the embedded model's shape, so no hub download is needed."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    data = Path(tempfile.mkdtemp(prefix="bench-chat-gpu-"))
    try:
        source = base_folder(Settings.from_env())
        folder = data / "random-smollm2-shape"
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source)).save_pretrained(folder)
        AutoTokenizer.from_pretrained(source).save_pretrained(folder)
        settings = Settings.from_env(data_dir=data, base_model=str(folder), precision=precision)
        registry = ModelRegistry(settings).load()
        # a ~1,500-token RAG prompt from real text: the PDF's pages as passages
        from loaders.documents import load

        pages = [page.page_content for page in load(PDF)]
        passages = []
        messages = prompts.answer_messages(QUESTION, passages, "cot")
        while registry.encode(messages)["input_ids"].shape[1] < TARGET_PROMPT_TOKENS:
            passages.append(pages[len(passages)][:1000])
            messages = prompts.answer_messages(QUESTION, passages, "cot")
        inputs = registry.encode(messages)
        generation = GenerationSettings(max_new_tokens=max_new_tokens)
        app_rows, plain_rows = [], []
        for run in range(runs + 1):
            registry.forget_prompts()  # every run repeats the prompt: time the whole prefill, not a reuse
            sync(registry.device)
            start = time.perf_counter()
            app = timed_stream(registry.stream(messages, BASE, generation), registry.tokenizer, start)
            plain = plain_generate(registry, registry.base, inputs, max(app["tokens"], 2))
            if run:
                app_rows.append(app)
                plain_rows.append(plain)
            print(f"  run {run}{' (warm-up)' if not run else ''}: app {app}  plain {plain}", flush=True)
        return {
            "device": torch.cuda.get_device_name(), "model": "random weights, SmolLM2-135M shape",
            "precision": registry.precision, "prompt_tokens": int(inputs["input_ids"].shape[1]), "runs": runs,
            "app": median_row(app_rows), "plain_generate": median_row(plain_rows),
            "decode_speedup_vs_plain": round(statistics.median(a["decode_tok_s"] for a in app_rows)
                                             / statistics.median(p["decode_tok_s"] for p in plain_rows), 2),
            "targets": {"first_token_s": 0.2, "decode_speedup_vs_plain": 10.0}, "torch": torch.__version__,
        }
    finally:
        shutil.rmtree(data, ignore_errors=True)


def api_arm(runs: int, max_new_tokens: int, style: str) -> dict:
    import socket
    import threading

    import openai
    import uvicorn
    from fastapi import FastAPI

    from chatapp.api import api_router
    from loaders.store import get_store

    data = Path(tempfile.mkdtemp(prefix="bench-chat-api-"))
    server = None
    try:
        settings = Settings.from_env(data_dir=data, score_threshold=0.0, models_dir=Settings.from_env().models_dir,
                                     api_key=None, auth=None)
        registry = ModelRegistry(settings).load()
        store = get_store(settings)
        store.ingest([str(PDF)])
        app = FastAPI()
        app.include_router(api_router(settings, registry, store))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        serving = threading.Thread(target=server.run, daemon=True)
        serving.start()
        while not server.started:
            time.sleep(0.05)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        generation = GenerationSettings(max_new_tokens=max_new_tokens)

        def in_process(question: str, k: int) -> float:
            start = time.perf_counter()
            answers = rag.answer(question, [], store=store, registry=registry, style=style, generation=generation,
                                 k=k, settings=settings)
            next(answers)  # the first snapshot: the first text the Chat tab shows
            first = time.perf_counter() - start
            answers.close()
            return first

        def through_api(question: str, k: int) -> float:
            settings.top_k = k  # the API retrieves settings.top_k passages: the same prompt as in_process
            start = time.perf_counter()
            stream = client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": question}],
                                                    max_tokens=max_new_tokens, stream=True, extra_body={"style": style})
            for chunk in stream:
                delta = chunk.choices[0].delta if chunk.choices else None
                if delta is not None and (delta.content or (delta.model_extra or {}).get("reasoning_content")):
                    break
            first = time.perf_counter() - start
            stream.close()
            return first

        rows = []
        for run in range(runs + 1):  # the first round warms up and is not counted
            question = QUESTIONS[run % len(QUESTIONS)]
            k, prompt_tokens = choose_k(store, registry, question, style)
            times = {}
            for arm in (("in_process", "api") if run % 2 else ("api", "in_process")):
                # Both compute the whole prompt. Forgotten on the model's thread: a stream the client closed after
                # its first chunk may still be finishing there, and would otherwise remember its prompt after this.
                registry.call(registry.forget_prompts)
                times[arm] = (in_process if arm == "in_process" else through_api)(question, k)
            print(f"  run {run}{' (warm-up)' if not run else ''}: {prompt_tokens} prompt tokens: "
                  f"in-process {times['in_process']:.3f} s, API {times['api']:.3f} s", flush=True)
            if run:
                rows.append({"prompt_tokens": prompt_tokens, **times})
        store.close()
        in_proc = statistics.median(r["in_process"] for r in rows)
        api = statistics.median(r["api"] for r in rows)
        # Each pair ran back to back on the same prompt, so its ratio is less exposed to a busy machine's drift.
        paired = statistics.median(r["api"] / r["in_process"] - 1 for r in rows)
        return {"device": "cpu", "model": "SmolLM2-135M-Instruct (embedded)", "precision": registry.precision,
                "style": style, "runs": runs, "rows": rows,
                "first_token_s": {"in_process": round(in_proc, 3), "api": round(api, 3)},
                "api_overhead": round(api / in_proc - 1, 4), "api_overhead_paired_median": round(paired, 4),
                "target": {"api_overhead_at_most": 0.10}, "load_average_1m": round(os.getloadavg()[0], 2)}
    finally:
        if server is not None:
            server.should_exit = True
            serving.join(timeout=10)
        shutil.rmtree(data, ignore_errors=True)


def api_report(result: dict) -> str:
    first = result["first_token_s"]
    return "\n".join([
        f"API overhead on {result['device']} — {result['model']}, {result['precision']}, {result['style']} style, "
        f"median of {result['runs']} runs (prompt tokens {[r['prompt_tokens'] for r in result['rows']]})",
        f"  in-process answer (rag.answer)  first token {first['in_process']:.3f} s",
        f"  /v1 API, openai SDK stream      first token {first['api']:.3f} s",
        f"  overhead {result['api_overhead']:+.1%} of the medians, {result['api_overhead_paired_median']:+.1%} the median pair "
        f"(target at most +10%); load average {result['load_average_1m']}",
    ])


def report(result: dict) -> str:
    app, plain = result["app"], result["plain_generate"]
    tokens = result["prompt_tokens"]
    tokens = f"{min(tokens)}-{max(tokens)}" if isinstance(tokens, list) else tokens
    lines = [
        f"chat benchmark on {result['device']} — {result['model']}, {result['precision']}, "
        f"{tokens} prompt tokens, median of {result['runs']} runs",
        f"  app path       first token {app['first_token_s']:.2f} s   decode {app['decode_tok_s']:.1f} tok/s   ({app['tokens']} tokens)",
        f"  plain generate first token {plain['first_token_s']:.2f} s   decode {plain['decode_tok_s']:.1f} tok/s",
    ]
    if "reused_prompt_tokens" in result:
        lines.append(f"  app reused the K/V of {result['reused_prompt_tokens']} prompt tokens from earlier questions")
    lines += [
        f"  targets        {result['targets']}",
    ]
    if "quality" in result:
        lines.append(f"  quality        {result['quality']}")
    if result.get("diagnosis"):
        lines.append(f"  diagnosis      {json.dumps(result['diagnosis'])}")
    if "environment" in result:
        lines.append(f"  environment    {result['environment']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5,
                        help=f"timed runs after one warm-up, at most {len(QUESTIONS) - 1} (default 5)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate per run (default 64)")
    parser.add_argument("--style", choices=list(prompts.STYLES), default="cot", help="prompt style (default cot)")
    parser.add_argument("--cpu-precision", default="auto",
                        help="precision for the CPU arm (default auto = the app's 32-bit; 16bit is bf16)")
    parser.add_argument("--gpu-precision", default="auto", help="precision for the GPU arm (default auto = 4-bit NF4)")
    parser.add_argument("--diagnose", action="store_true",
                        help="CPU: profile prefill and one decode step, and time static-cache generate")
    parser.add_argument("--skip-cpu", action="store_true", help="run only the GPU arm")
    parser.add_argument("--api", action="store_true",
                        help="only the API arm: /v1's first token against the in-process answer's")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results folder")
    args = parser.parse_args()
    if not 1 <= args.runs < len(QUESTIONS):
        parser.error(f"--runs must be 1 to {len(QUESTIONS) - 1}: each CPU run asks a question not asked before")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.api:
        print("API arm", flush=True)
        result = api_arm(args.runs, args.max_new_tokens, args.style)
        text = api_report(result)
        print(text)
        (args.out / "chat-api.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "chat-api.txt").write_text(text + "\n")
        return 0
    arms = []
    if not args.skip_cpu:
        print("CPU arm", flush=True)
        name = "cpu" if args.cpu_precision == "auto" else f"cpu-{args.cpu_precision}"
        arms.append((name, cpu_arm(args.runs, args.max_new_tokens, args.style, args.diagnose, args.cpu_precision)))
    if torch.cuda.is_available():
        print("GPU arm", flush=True)
        arms.append(("gpu", gpu_arm(args.runs, args.max_new_tokens, args.gpu_precision)))
    else:
        print("GPU arm skipped: CUDA is not available", flush=True)
    for name, result in arms:
        text = report(result)
        print(text)
        (args.out / f"chat-{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / f"chat-{name}.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
