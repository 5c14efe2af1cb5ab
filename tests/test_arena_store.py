"""The vote store: WAL SQLite, one vote per battle, concurrent voters, and votes that survive a kill."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from dataclasses import asdict
from pathlib import Path

import pytest

from eval.arena import AlreadyVoted, ArenaStore, Battle, read_battles_jsonl
from eval.ratings import compute_elo

ROOT = Path(__file__).resolve().parents[1]

WRITER = """
import sys, time
from eval.arena import ArenaStore, Battle
store = ArenaStore(sys.argv[1])
for i in range(100000):
    b = store.record_vote(Battle(model_a="base", model_b="tuned", winner="model_b" if i % 3 else "tie",
                                 prompt=f"prompt {i}", answer_a="a", answer_b="b", question_id=f"{sys.argv[2]}-{i}"))
    print(b.question_id, flush=True)  # the page's confirmation comes only after record_vote returns
"""


def test_one_vote_per_battle_and_fastchat_fields(tmp_path):
    store = ArenaStore(tmp_path / "arena.sqlite")
    battle = store.record_vote(Battle(model_a="base", model_b="tuned", winner="tie (bothbad)", prompt="hi",
                                      answer_a="Hello", answer_b="Hi there"))
    with pytest.raises(AlreadyVoted):
        store.record_vote(Battle(model_a="base", model_b="tuned", winner="model_a", question_id=battle.question_id))
    with pytest.raises(ValueError, match="winner must be one of"):
        store.record_vote(Battle(model_a="base", model_b="tuned", winner="A"))
    assert store.count() == 1
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    out = tmp_path / "export.jsonl"
    assert store.export(out) == 1
    row = json.loads(out.read_text())
    assert row["winner"] == "tie (bothbad)" and row["model_a"] == "base" and row["model_b"] == "tuned"
    assert row["conversation_b"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hi there"}]
    assert isinstance(row["tstamp"], float) and row["turn"] == 1
    assert read_battles_jsonl(out)[0]["question_id"] == battle.question_id


def test_threads_and_processes_voting_at_once_lose_nothing(tmp_path):
    path = tmp_path / "arena.sqlite"
    store = ArenaStore(path)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"proc{i}"], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True) for i in range(2)]
    errors: list[Exception] = []

    def vote(tag: str) -> None:
        try:
            for i in range(40):
                store.record_vote(Battle(model_a="base", model_b="tuned", winner="model_a", question_id=f"{tag}-{i}"))
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=vote, args=(f"thread{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    confirmed = set()
    for proc in procs:
        for _ in range(40):
            confirmed.add(proc.stdout.readline().strip())
        proc.kill()
        proc.wait()
    assert not errors
    ids = {b.question_id for b in ArenaStore(path).battles()}
    assert {f"thread{i}-{j}" for i in range(4) for j in range(40)} <= ids
    assert confirmed <= ids


def test_confirmed_votes_survive_a_killed_process(tmp_path):
    path = tmp_path / "arena.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "run"], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    confirmed = [proc.stdout.readline().strip() for _ in range(60)]
    os.kill(proc.pid, signal.SIGKILL)  # no clean shutdown, mid-write
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    restarted = ArenaStore(path)  # a fresh process view: new connections, WAL recovered
    battles = restarted.battles()
    ids = [b.question_id for b in battles]
    assert set(confirmed) <= set(ids)
    assert ids[:60] == confirmed  # vote order is kept
    # and they rate like any battles
    elo = compute_elo([asdict(b) for b in battles])
    assert elo["tuned"] > elo["base"]
