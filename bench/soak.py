"""Soak: minutes of mixed load on the real app (chat through /v1, searches, arena battles and votes, uploads),
with the app killed by SIGKILL in the middle of each round and started again on the same data folder.

    python bench/soak.py [--rounds 3] [--seconds 60] [--users 4] [--out bench/results/soak.md]

Reports, per action, how many ran, failed before the kill and were cut by the kill, with p50/p95
latency; and what the kills lost: confirmed votes missing, confirmed uploads missing, sources listed
with fewer chunks than a clean ingest gives them. The baseline is the same load with no kill (round 0).
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import openai
from gradio_client import Client, handle_file

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
sys.path.insert(0, str(ROOT))

from machine import matrix_units  # noqa: E402

from chatapp.settings import Settings  # noqa: E402
from eval.arena import ArenaStore  # noqa: E402
from loaders.store import get_store  # noqa: E402

QUESTIONS = ["What value of label smoothing was used?", "How many attention heads are used?",
             "What optimizer was used?", "How many warmup steps were used?", "What is the BLEU score on English-German?",
             "What does the encoder consist of?"]
UPLOADS = sorted((CORPUS / "html").glob("*.html"))


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    failed: dict[str, list[str]] = field(default_factory=dict)
    cut: dict[str, int] = field(default_factory=dict)  # in flight when the app was killed
    confirmed_votes: int = 0
    confirmed_uploads: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, action: str, started: float, error: Exception | None, killed_at: float | None) -> None:
        with self.lock:
            if error is None:
                self.latencies.setdefault(action, []).append(time.perf_counter() - started)
            elif killed_at is not None and time.perf_counter() >= killed_at - 0.5:
                self.cut[action] = self.cut.get(action, 0) + 1
            else:
                self.failed.setdefault(action, []).append(f"{type(error).__name__}: {error}"[:200])


def start_app(data: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "CHATAPP_DATA_DIR": str(data), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    env.pop("CHATAPP_AUTH", None)
    log = open(data / "app.log", "a")
    process = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600  # a loaded 2-core machine took over 3 minutes once
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("the app did not come up: see " + str(data / "app.log"))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_round(data: Path, seconds: float, users: int, tally: Tally, kill: bool, rng: random.Random) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    app = start_app(data, port)
    stop_at = time.perf_counter() + seconds
    killed_at = stop_at - seconds * rng.uniform(0.3, 0.6) if kill else None
    state = {"killed": None}

    def chat_user() -> None:
        client = openai.OpenAI(base_url=url + "v1", api_key="unused", max_retries=0, timeout=300)
        while time.perf_counter() < stop_at and state["killed"] is None:
            started = time.perf_counter()
            try:
                client.chat.completions.create(model="base", max_tokens=24,
                                               messages=[{"role": "user", "content": rng.choice(QUESTIONS)}])
                tally.record("chat (/v1)", started, None, killed_at)
            except Exception as error:
                tally.record("chat (/v1)", started, error, state["killed"] or killed_at)

    def page_user() -> None:
        try:
            client = Client(url, verbose=False)
        except Exception as error:
            tally.record("connect", time.perf_counter(), error, state["killed"] or killed_at)
            return
        while time.perf_counter() < stop_at and state["killed"] is None:
            action = rng.choice(["search", "search", "sources", "battle+vote"])
            started = time.perf_counter()
            try:
                if action == "search":
                    client.predict(rng.choice(QUESTIONS), 4, api_name="/search")
                elif action == "sources":
                    client.predict(api_name="/sources")
                else:
                    client.predict("Reply with one word: hello.", False, api_name="/battle")
                    client.predict(api_name=rng.choice(["/vote_a", "/vote_b", "/vote_tie"]))
                    with tally.lock:
                        tally.confirmed_votes += 1  # the page would now show the reveal
                tally.record(action, started, None, killed_at)
            except Exception as error:
                tally.record(action, started, error, state["killed"] or killed_at)

    def uploader() -> None:
        try:
            client = Client(url, verbose=False)
        except Exception as error:
            tally.record("connect", time.perf_counter(), error, state["killed"] or killed_at)
            return
        pending = [p for p in UPLOADS if p.name not in tally.confirmed_uploads]
        while pending and time.perf_counter() < stop_at and state["killed"] is None:
            path = pending.pop(0)
            started = time.perf_counter()
            try:
                log = client.predict([handle_file(str(path))], "", api_name="/upload")
                if "1 of 1 sources stored" in log:
                    with tally.lock:
                        tally.confirmed_uploads.add(path.name)
                tally.record("upload", started, None, killed_at)
            except Exception as error:
                tally.record("upload", started, error, state["killed"] or killed_at)
            time.sleep(seconds / 6)

    threads = [threading.Thread(target=chat_user) for _ in range(max(1, users // 2))]
    threads += [threading.Thread(target=page_user) for _ in range(max(1, users - users // 2))]
    threads.append(threading.Thread(target=uploader))
    for thread in threads:
        thread.start()
    if kill:
        time.sleep(max(0.0, killed_at - time.perf_counter()))
        state["killed"] = time.perf_counter()
        app.send_signal(signal.SIGKILL)
        app.wait()
    for thread in threads:
        thread.join(timeout=600)
    if not kill:
        app.terminate()
        app.wait(timeout=30)


def check(data: Path, tally: Tally, clean_chunks: dict[str, int]) -> dict:
    settings = Settings.from_env(data_dir=data)
    votes = ArenaStore(settings.arena_db).count()
    store = get_store(settings)
    try:
        listed = {e["source"]: e["chunks"] for e in store.list_sources()}
    finally:
        store.close()
    missing_uploads = sorted(n for n in tally.confirmed_uploads if not any(s.endswith(n) for s in listed))
    half = sorted(s for s, n in listed.items() if Path(s).name in clean_chunks and n != clean_chunks[Path(s).name])
    return {"votes_confirmed": tally.confirmed_votes, "votes_stored": votes,
            "votes_lost": max(0, tally.confirmed_votes - votes), "uploads_confirmed": len(tally.confirmed_uploads),
            "uploads_lost": missing_uploads, "half_sources_listed": half}


def clean_counts(scratch: Path) -> dict[str, int]:
    """Chunks a clean ingest gives each upload, to tell a half-stored source from a whole one."""
    store = get_store(Settings.from_env(data_dir=scratch))
    try:
        store.ingest([str(p) for p in UPLOADS])
        return {Path(e["source"]).name: e["chunks"] for e in store.list_sources()}
    finally:
        store.close()


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def report(tallies: list[tuple[str, Tally, dict]], args) -> str:
    lines = [f"# Soak: {args.rounds} rounds of {args.seconds:g} s, {args.users} users + 1 uploader",
             "", f"{os.cpu_count()} cores; matrix units: {', '.join(matrix_units()) or 'none'}", "", f"`python bench/soak.py --rounds {args.rounds} --seconds {args.seconds:g} "
             f"--users {args.users}`", ""]
    for title, tally, outcome in tallies:
        lines += [f"## {title}", "", "| action | done | failed | cut by the kill | p50 s | p95 s |", "|---|---:|---:|---:|---:|---:|"]
        for action in sorted(set(tally.latencies) | set(tally.failed) | set(tally.cut)):
            done = tally.latencies.get(action, [])
            p50 = f"{statistics.median(done):.2f}" if done else "—"
            p95 = f"{percentile(done, 95):.2f}" if done else "—"
            lines.append(f"| {action} | {len(done)} | {len(tally.failed.get(action, []))} | {tally.cut.get(action, 0)} "
                         f"| {p50} | {p95} |")
        lines += ["", "| check | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in outcome.items()]
        errors = [e for errs in tally.failed.values() for e in errs]
        if errors:
            lines += ["", "Failures (not caused by a kill):", *[f"- {e}" for e in errors[:10]]]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds with a kill -9 (after one round without)")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        clean = clean_counts(Path(tmp) / "clean")
        results = []
        for kills, title in ((False, "Baseline: the same load, no kill"), (True, "With kill -9 mid-round")):
            data = Path(tmp) / ("killed" if kills else "plain")
            data.mkdir()
            store = get_store(Settings.from_env(data_dir=data))
            store.ingest([str(CORPUS / "pdf" / "attention-is-all-you-need.pdf")])
            store.close()
            make_variant(data)
            tally = Tally()
            for _ in range(args.rounds if kills else 1):
                run_round(data, args.seconds, args.users, tally, kills, rng)
            results.append((title, tally, check(data, tally, clean)))
            shutil.rmtree(data, ignore_errors=True)
    text = report(results, args)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def make_variant(data: Path) -> None:
    """A second variant for the arena: a tiny LoRA adapter nudged off its no-op start."""
    import torch
    from peft import LoraConfig, get_peft_model

    from chatapp.loading import load_base

    settings = Settings.from_env(data_dir=data)
    model, _, _ = load_base(settings)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.5)
    peft_model.save_pretrained(settings.adapters_dir / "tiny")


if __name__ == "__main__":
    sys.exit(main())
