"""Saved conversations on real SQLite: turns, order, titles, ownership, export, threads and a killed writer."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from contextlib import closing
from pathlib import Path

import pytest

from chatapp.conversations import Conversations, Turn

ROOT = Path(__file__).resolve().parents[1]
SOURCE = {"number": 1, "source": "attention-is-all-you-need.pdf", "text": "We used label smoothing of value 0.1.",
          "score": 0.61, "title": "", "kind": "pdf", "page": 8, "start": None, "sha256": "ab" * 32,
          "quote": "We used label smoothing of value 0.1.", "quote_spans": [[0, 37]]}


@pytest.fixture
def conversations(tmp_path) -> Conversations:
    return Conversations(tmp_path / "conversations.sqlite")


def turn(question: str, answer: str = "An answer.", **fields) -> Turn:
    return Turn(question=question, answer=answer, **fields)


def test_turns_are_stored_in_order_with_their_sources_and_the_title_is_the_first_question(conversations, tmp_path):
    cid = conversations.create()
    first = conversations.append_turn(cid, turn("What value of label smoothing was used?", "0.1", sources=[SOURCE],
                                                evidence=[{"source": SOURCE["source"], "page": 8, "quote": SOURCE["quote"]}],
                                                variant="base", style="cot", reasoning="Passage [1] says 0.1."))
    second = conversations.append_turn(cid, turn("And how many warmup steps?", "4000", unsupported=["17"]))
    assert (first.number, second.number) == (1, 2)

    # a second instance on the same file (a restarted app) reads everything back
    again = Conversations(tmp_path / "conversations.sqlite").get(cid)
    assert again.title == "What value of label smoothing was used?"
    assert [t.question for t in again.turns] == ["What value of label smoothing was used?", "And how many warmup steps?"]
    assert again.turns[0].sources == [SOURCE] and again.turns[0].reasoning == "Passage [1] says 0.1."
    assert again.turns[0].variant == "base" and again.turns[1].unsupported == ["17"]
    assert again.history() == [
        {"role": "user", "content": "What value of label smoothing was used?"}, {"role": "assistant", "content": "0.1"},
        {"role": "user", "content": "And how many warmup steps?"}, {"role": "assistant", "content": "4000"},
    ]
    with closing(sqlite3.connect(tmp_path / "conversations.sqlite")) as db:  # WAL is a property of the file
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_file_made_before_a_column_was_added_gains_it_and_keeps_its_turns(tmp_path):
    """A conversations.sqlite written before turns had `unmentioned` (the schema of 2026-12-06) opens, its
    turns read back with the column's default, and new turns store it."""
    path = tmp_path / "conversations.sqlite"
    with closing(sqlite3.connect(path)) as db:
        db.executescript("""
            CREATE TABLE conversations (id TEXT PRIMARY KEY, user TEXT NOT NULL DEFAULT '', title TEXT NOT NULL
                DEFAULT '', created REAL NOT NULL, updated REAL NOT NULL);
            CREATE TABLE turns (conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
                number INTEGER NOT NULL, created REAL NOT NULL, question TEXT NOT NULL, answer TEXT NOT NULL
                DEFAULT '', reasoning TEXT NOT NULL DEFAULT '', standalone_question TEXT NOT NULL DEFAULT '',
                status TEXT NOT NULL DEFAULT 'answered', variant TEXT NOT NULL DEFAULT '', style TEXT NOT NULL
                DEFAULT '', model_answer TEXT NOT NULL DEFAULT '', sources TEXT NOT NULL DEFAULT '[]', evidence
                TEXT NOT NULL DEFAULT '[]', unsupported TEXT NOT NULL DEFAULT '[]',
                PRIMARY KEY (conversation_id, number));
            INSERT INTO conversations VALUES ('old', '', 'An old one', 1.0, 1.0);
            INSERT INTO turns (conversation_id, number, created, question, answer) VALUES ('old', 1, 1.0, 'Q?', 'A.');
        """)
    conversations = Conversations(path)
    old = conversations.get("old")
    assert [(t.question, t.answer, t.unmentioned) for t in old.turns] == [("Q?", "A.", [])]
    conversations.append_turn("old", turn("Who is Ada Lovelace?", "The documents don't mention Ada Lovelace.",
                                          status="no_context", unmentioned=["Ada Lovelace"]))
    assert Conversations(path).get("old").turns[1].unmentioned == ["Ada Lovelace"]


def test_the_list_is_newest_first_skips_empty_ones_and_follows_renames(conversations):
    old = conversations.create()
    conversations.append_turn(old, turn("How many layers does the encoder have?"))
    empty = conversations.create()
    new = conversations.create()
    conversations.append_turn(new, turn("What optimizer was used? " + "very " * 40 + "long"))
    listed = conversations.list()
    assert [s.id for s in listed] == [new, old] and empty not in [s.id for s in listed]
    assert listed[0].title.endswith("…") and len(listed[0].title) == 80
    assert listed[1].turns == 1

    conversations.append_turn(old, turn("And the decoder?"))  # continuing one moves it to the top
    assert [s.id for s in conversations.list()] == [old, new]
    conversations.rename(old, "  Encoder   layers ")
    assert conversations.list()[0].title == "Encoder layers"
    conversations.append_turn(old, turn("A third question"))
    assert conversations.get(old).title == "Encoder layers"  # a renamed title stays
    with pytest.raises(ValueError):
        conversations.rename(old, "   ")

    conversations.delete(old)
    assert [s.id for s in conversations.list()] == [new]
    with pytest.raises(KeyError):
        conversations.get(old)
    with pytest.raises(KeyError):
        conversations.append_turn(old, turn("Too late"))


def test_a_conversation_opened_with_small_talk_is_named_by_its_first_question(conversations):
    """Walking the app, "Good evening! Hope you're doing well." named the conversation the question came in."""
    cid = conversations.create()
    conversations.append_turn(cid, turn("Good evening! Hope you're doing well.", "Hello!", status="small_talk"))
    assert conversations.get(cid).title == "Good evening! Hope you're doing well."  # nothing better yet
    conversations.append_turn(cid, turn("hi again", "Hi!", status="small_talk"))
    conversations.append_turn(cid, turn("What was Mozilla's total revenue for 2011?", "$163 million."))
    conversations.append_turn(cid, turn("And in 2010?", "$123 million."))
    assert conversations.get(cid).title == "What was Mozilla's total revenue for 2011?"
    renamed = conversations.create()
    conversations.append_turn(renamed, turn("hello", "Hi!", status="small_talk"))
    conversations.rename(renamed, "Revenue")
    conversations.append_turn(renamed, turn("What was the revenue?", "$163 million."))
    assert conversations.get(renamed).title == "Revenue"  # a title the user gave stays


def test_each_user_sees_only_their_own_conversations(conversations):
    alice = conversations.create(user="alice")
    conversations.append_turn(alice, turn("Alice's question"), user="alice")
    bob = conversations.create(user="bob")
    conversations.append_turn(bob, turn("Bob's question"), user="bob")
    assert [s.title for s in conversations.list("alice")] == ["Alice's question"]
    assert [s.title for s in conversations.list("bob")] == ["Bob's question"]
    assert conversations.list() == []  # the anonymous user (no login) sees neither
    for attempt in (lambda: conversations.get(alice, "bob"), lambda: conversations.rename(alice, "x", "bob"),
                    lambda: conversations.delete(alice, "bob"), lambda: conversations.export_json(alice, "bob"),
                    lambda: conversations.append_turn(alice, turn("sneaky"), user="bob")):
        with pytest.raises(KeyError):
            attempt()
    assert [t.question for t in conversations.get(alice, "alice").turns] == ["Alice's question"]


def test_export_as_markdown_and_json(conversations):
    cid = conversations.create()
    conversations.append_turn(cid, turn("What value of label smoothing was used?", "0.1", sources=[SOURCE],
                                        model_answer="It was 0.3.", unsupported=["0.3"]))
    markdown = conversations.export_markdown(cid)
    assert markdown.startswith("# What value of label smoothing was used?\n")
    assert "## 1. What value of label smoothing was used?" in markdown and "\n0.1\n" in markdown
    assert "- attention-is-all-you-need.pdf, p. 8: “We used label smoothing of value 0.1.”" in markdown
    assert "The model wrote: It was 0.3." in markdown and "Not in any source: 0.3" in markdown
    record = json.loads(conversations.export_json(cid))
    assert record["id"] == cid and record["title"] == "What value of label smoothing was used?"
    assert record["turns"][0]["answer"] == "0.1" and record["turns"][0]["sources"][0]["page"] == 8
    assert record["turns"][0]["created"].endswith("+00:00")  # ISO 8601, UTC


def test_threads_appending_at_once_lose_nothing_and_number_turns_without_gaps(conversations):
    ids = [conversations.create() for _ in range(4)]
    errors = []

    def chat(cid: str, worker: int) -> None:
        try:
            for n in range(10):
                conversations.append_turn(cid, turn(f"worker {worker} question {n}"))
                conversations.list()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=chat, args=(ids[w % 4], w)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for cid in ids:
        numbers = [t.number for t in conversations.get(cid).turns]
        assert numbers == list(range(1, 21))


def test_turns_committed_before_a_kill_9_are_all_there(tmp_path):
    """A writer process killed with SIGKILL mid-stream: every turn it reported as stored is read back."""
    path = tmp_path / "conversations.sqlite"
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from chatapp.conversations import Conversations, Turn
        store = Conversations({str(path)!r})
        cid = store.create()
        print(cid, flush=True)
        for n in range(100000):
            store.append_turn(cid, Turn(question=f"question {{n}}", answer="x" * 2000))
            print(n, flush=True)
        """)], cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    cid = writer.stdout.readline().strip()
    confirmed = -1
    while confirmed < 30:
        confirmed = int(writer.stdout.readline())
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    for line in writer.stdout.read().split():  # confirmations already in the pipe count too
        confirmed = int(line)
    stored = Conversations(path).get(cid).turns
    assert len(stored) >= confirmed + 1
    assert [t.number for t in stored] == list(range(1, len(stored) + 1))
