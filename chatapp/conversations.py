"""Saved conversations: one SQLite file in the data folder (DATA/conversations.sqlite), a row per turn.

A turn (question, answer, reasoning, sources, evidence, flags, variant, style, time) is written by
`append_turn` once its answer is complete, so a conversation survives a reload, a restart or a kill -9.
The Chat tab and the /v1 API both read and write through `Conversations`.

- Every call opens its own short connection (as eval/arena.py does), so Gradio's worker threads, the
  API's thread pool and other processes can share the file: WAL lets readers run beside the one writer,
  and the busy timeout makes writers wait their turn instead of failing.
- `synchronous=FULL`: the WAL is fsynced at each commit, so a turn the page has shown as complete is on
  disk even if the machine loses power, not only if the process dies; one fsync is nothing beside the
  seconds a generation takes.
- Ownership: each conversation has a `user` ("" when no login is set). Every call takes the user and
  only sees that user's conversations; another user's id reads as unknown (KeyError), never as
  "not yours", so ids are not revealed.
- A conversation's title is its first question until it is renamed; the first after a greeting when
  it opened with small talk.
"""
from __future__ import annotations

import json
import sqlite3
import time
import uuid
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for the type hint: rag imports the model layer (torch), this module stays light
    from chatapp.rag import Answer

TITLE_CHARS = 80  # a first question longer than this is cut for the title
SMALL_TALK = "small_talk"  # rag.Answer.status of a pleasantry
UNTITLED = "New chat"

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL DEFAULT '',
    title TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS conversations_by_user ON conversations (user, updated);
CREATE TABLE IF NOT EXISTS turns (
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    created REAL NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL DEFAULT '',
    reasoning TEXT NOT NULL DEFAULT '',
    standalone_question TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'answered',
    variant TEXT NOT NULL DEFAULT '',
    style TEXT NOT NULL DEFAULT '',
    model_answer TEXT NOT NULL DEFAULT '',
    sources TEXT NOT NULL DEFAULT '[]',
    evidence TEXT NOT NULL DEFAULT '[]',
    unsupported TEXT NOT NULL DEFAULT '[]',
    unmentioned TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (conversation_id, number)
);
"""
JSON_COLUMNS = ("sources", "evidence", "unsupported", "unmentioned")
# Columns added since the first schema, each with its default: a file made before gains them on open.
ADDED_COLUMNS = {"unmentioned": "TEXT NOT NULL DEFAULT '[]'"}


@dataclass
class Turn:
    question: str
    answer: str
    reasoning: str = ""
    standalone_question: str = ""
    status: str = "answered"
    variant: str = ""
    style: str = ""
    model_answer: str = ""
    # Every field of each listed rag.Source (text, page, quote and its spans, sha256), so the Chat tab can
    # draw the sources panel and the page picture again when the conversation is reopened.
    sources: list[dict] = field(default_factory=list)
    evidence: list[dict] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    # The names asked about that no stored chunk holds, so that a reopened turn says why it has no sources.
    unmentioned: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    number: int = 0  # set by append_turn: 1, 2, ... within its conversation

    @classmethod
    def from_answer(cls, answer: Answer, variant: str = "", style: str = "") -> Turn:
        """The finished rag.Answer as a turn to store."""
        return cls(question=answer.question, answer=answer.answer, reasoning=answer.reasoning,
                   standalone_question=answer.standalone_question, status=answer.status, variant=variant,
                   style=style, model_answer=answer.model_answer, sources=[asdict(s) for s in answer.sources],
                   evidence=answer.evidence, unsupported=list(answer.unsupported),
                   unmentioned=list(answer.unmentioned))


@dataclass
class Summary:
    """A conversation as the list shows it."""
    id: str
    title: str
    created: float
    updated: float
    turns: int


@dataclass
class Conversation:
    id: str
    title: str
    user: str
    created: float
    updated: float
    turns: list[Turn] = field(default_factory=list)

    def history(self) -> list[dict]:
        """The turns as user/assistant messages, the shape rag.answer reads to resolve a follow-up."""
        messages = []
        for turn in self.turns:
            messages.append({"role": "user", "content": turn.question})
            if turn.answer:
                messages.append({"role": "assistant", "content": turn.answer})
        return messages

    def to_json(self) -> dict:
        return {"id": self.id, "title": self.title, "created": iso(self.created), "updated": iso(self.updated),
                "turns": [{**asdict(t), "created": iso(t.created)} for t in self.turns]}

    def export(self, kind: str) -> str:
        """The conversation as a file's text: kind "md" (Markdown) or "json"."""
        if kind == "md":
            return self.to_markdown()
        if kind == "json":
            return json.dumps(self.to_json(), ensure_ascii=False, indent=2)
        raise ValueError(f"export as md or json, not {kind!r}")

    def to_markdown(self) -> str:
        lines = [f"# {self.title}", "", f"_{len(self.turns)} turns, {iso(self.created)} to {iso(self.updated)}_", ""]
        for turn in self.turns:
            lines += [f"## {turn.number}. {turn.question}", "",
                      f"_{iso(turn.created)}, variant {turn.variant or 'base'}_", "", turn.answer or "(no answer)", ""]
            if turn.model_answer:
                lines += [f"> The model wrote: {turn.model_answer}", ""]
            if turn.unsupported:
                lines += [f"⚠ Not in any source: {', '.join(turn.unsupported)}", ""]
            if turn.sources:
                lines.append("Sources:")
                for source in turn.sources:
                    where = f", p. {source['page']}" if source.get("page") else ""
                    quote = f": “{source['quote']}”" if source.get("quote") else ""
                    lines.append(f"- {source.get('source', '?')}{where}{quote}")
                lines.append("")
        return "\n".join(lines).rstrip() + "\n"


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def title_for(question: str) -> str:
    text = " ".join(question.split())
    return text if len(text) <= TITLE_CHARS else text[:TITLE_CHARS - 1].rstrip() + "…"


class Conversations:
    """The conversations in `path` (settings.conversations_db). Safe to share between threads and processes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")  # persistent in the file: readers never block the writer
            db.executescript(SCHEMA)
            present = {row["name"] for row in db.execute("PRAGMA table_info(turns)")}
            for column, declaration in ADDED_COLUMNS.items():
                if column not in present:
                    db.execute(f"ALTER TABLE turns ADD COLUMN {column} {declaration}")

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE below), so numbering a turn and
        # inserting it happen under one write lock.
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.row_factory = sqlite3.Row
        return db

    def create(self, user: str = "", title: str = "") -> str:
        """A new, empty conversation; returns its id. Its title is the first question unless given."""
        conversation_id, now = uuid.uuid4().hex, time.time()
        with closing(self._connect()) as db:
            db.execute("INSERT INTO conversations (id, user, title, created, updated) VALUES (?, ?, ?, ?, ?)",
                       (conversation_id, user, title.strip(), now, now))
        return conversation_id

    def append_turn(self, conversation_id: str, turn: Turn, user: str = "") -> Turn:
        """Store a finished turn at the end of the conversation; returns it numbered, once committed."""
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT title FROM conversations WHERE id = ? AND user = ?",
                                 (conversation_id, user)).fetchone()
                if row is None:
                    raise KeyError(f"no conversation {conversation_id}")
                number = db.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM turns WHERE conversation_id = ?",
                                    (conversation_id,)).fetchone()[0]
                record = {**asdict(turn), "number": number, "conversation_id": conversation_id}
                for column in JSON_COLUMNS:
                    record[column] = json.dumps(record[column], ensure_ascii=False)
                db.execute(f"INSERT INTO turns ({', '.join(record)}) VALUES ({', '.join('?' * len(record))})",
                           tuple(record.values()))
                title = row["title"] or title_for(turn.question)
                if turn.status != SMALL_TALK and title != title_for(turn.question):
                    # Opened with a greeting, the conversation is named by its first real question instead
                    # ("Good evening!" named it, walking the app); a title the user gave is kept.
                    earlier = db.execute("SELECT question, status FROM turns WHERE conversation_id = ? AND number < ? "
                                         "ORDER BY number", (conversation_id, number)).fetchall()
                    if earlier and all(r["status"] == SMALL_TALK for r in earlier) \
                            and title == title_for(earlier[0]["question"]):
                        title = title_for(turn.question)
                db.execute("UPDATE conversations SET updated = ?, title = ? WHERE id = ?",
                           (max(turn.created, time.time()), title, conversation_id))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        turn.number = number
        return turn

    def list(self, user: str = "") -> list[Summary]:
        """The user's conversations that hold at least one turn, most recently active first."""
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT c.id, c.title, c.created, c.updated, COUNT(t.number) AS turns FROM conversations c "
                "JOIN turns t ON t.conversation_id = c.id WHERE c.user = ? GROUP BY c.id "
                "ORDER BY c.updated DESC, c.rowid DESC", (user,)).fetchall()
        return [Summary(r["id"], r["title"] or UNTITLED, r["created"], r["updated"], r["turns"]) for r in rows]

    def get(self, conversation_id: str, user: str = "") -> Conversation:
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM conversations WHERE id = ? AND user = ?", (conversation_id, user)).fetchone()
            if row is None:
                raise KeyError(f"no conversation {conversation_id}")
            turns = db.execute("SELECT * FROM turns WHERE conversation_id = ? ORDER BY number",
                               (conversation_id,)).fetchall()
        return Conversation(row["id"], row["title"] or UNTITLED, row["user"], row["created"], row["updated"],
                            [_turn(t) for t in turns])

    def rename(self, conversation_id: str, title: str, user: str = "") -> None:
        title = " ".join(title.split())
        if not title:
            raise ValueError("a conversation's title cannot be empty")
        with closing(self._connect()) as db:
            changed = db.execute("UPDATE conversations SET title = ? WHERE id = ? AND user = ?",
                                 (title, conversation_id, user)).rowcount
        if not changed:
            raise KeyError(f"no conversation {conversation_id}")

    def delete(self, conversation_id: str, user: str = "") -> None:
        """Remove the conversation and its turns (foreign key cascade)."""
        with closing(self._connect()) as db:
            removed = db.execute("DELETE FROM conversations WHERE id = ? AND user = ?", (conversation_id, user)).rowcount
        if not removed:
            raise KeyError(f"no conversation {conversation_id}")

    def export_markdown(self, conversation_id: str, user: str = "") -> str:
        return self.get(conversation_id, user).export("md")

    def export_json(self, conversation_id: str, user: str = "") -> str:
        return self.get(conversation_id, user).export("json")


def _turn(row: sqlite3.Row) -> Turn:
    values = {k: row[k] for k in row.keys() if k != "conversation_id"}
    for column in JSON_COLUMNS:
        values[column] = json.loads(values[column])
    return Turn(**values)
