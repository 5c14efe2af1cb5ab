"""Durable storage of arena votes: one SQLite file in WAL mode, one row per voted battle.

Rows carry FastChat's battle fields (`model_a`, `model_b`, `winner`, `tstamp`, `judge`) plus the
prompt and both answers; `export` writes FastChat's clean-battle JSONL (with `conversation_a/b`),
and `read_battles_jsonl` reads such files back so exported or FastChat logs can be rated too.

Every call opens its own short connection, so Gradio's worker threads and several processes can
vote at once: SQLite serialises the writers (busy timeout), and a vote is committed with
`synchronous=FULL` before `record_vote` returns, so a confirmed vote survives a killed process.
"""
from __future__ import annotations

import json
import sqlite3
import time
import uuid
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path

from eval.ratings import check_battle

SCHEMA = """
CREATE TABLE IF NOT EXISTS battles (
    question_id TEXT PRIMARY KEY,
    tstamp REAL NOT NULL,
    model_a TEXT NOT NULL,
    model_b TEXT NOT NULL,
    winner TEXT NOT NULL CHECK (winner IN ('model_a', 'model_b', 'tie', 'tie (bothbad)')),
    judge TEXT NOT NULL DEFAULT '',
    prompt TEXT NOT NULL DEFAULT '',
    answer_a TEXT NOT NULL DEFAULT '',
    answer_b TEXT NOT NULL DEFAULT '',
    rag INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS battles_by_time ON battles (tstamp);
"""


class AlreadyVoted(Exception):
    """The battle already has its one vote."""


@dataclass
class Battle:
    model_a: str
    model_b: str
    winner: str
    prompt: str = ""
    answer_a: str = ""
    answer_b: str = ""
    question_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    tstamp: float = field(default_factory=time.time)
    judge: str = ""
    rag: bool = False

    def to_fastchat(self) -> dict:
        """FastChat's clean battle record (single turn, anonymous)."""
        row = asdict(self)
        row["conversation_a"] = [{"role": "user", "content": self.prompt},
                                 {"role": "assistant", "content": self.answer_a}]
        row["conversation_b"] = [{"role": "user", "content": self.prompt},
                                 {"role": "assistant", "content": self.answer_b}]
        row["turn"] = 1
        row["anony"] = True
        return row


class ArenaStore:
    """Votes in `path` (settings.arena_db). Safe to share between threads and processes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: readers never block the writer
            db.executescript(SCHEMA)
            db.commit()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30.0)
        db.execute("PRAGMA synchronous=FULL")  # fsync the WAL on commit: a confirmed vote is on disk
        db.row_factory = sqlite3.Row
        return db

    def record_vote(self, battle: Battle) -> Battle:
        """Store one voted battle; returns once it is committed. A second vote for the same
        `question_id` raises AlreadyVoted (one battle takes one vote)."""
        check_battle(asdict(battle))
        row = asdict(battle)
        row["rag"] = int(battle.rag)
        try:
            with closing(self._connect()) as db, db:
                db.execute(f"INSERT INTO battles ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                           tuple(row.values()))
        except sqlite3.IntegrityError as error:
            if "UNIQUE" in str(error) or "PRIMARY KEY" in str(error):
                raise AlreadyVoted(f"battle {battle.question_id} already has a vote") from None
            raise
        return battle

    def battles(self) -> list[Battle]:
        """All voted battles in vote order."""
        with closing(self._connect()) as db:
            rows = db.execute("SELECT * FROM battles ORDER BY tstamp, rowid").fetchall()
        return [Battle(**{**dict(r), "rag": bool(r["rag"])}) for r in rows]

    def count(self) -> int:
        with closing(self._connect()) as db:
            return db.execute("SELECT COUNT(*) FROM battles").fetchone()[0]

    def export_records(self) -> list[dict]:
        """Every battle as FastChat's clean-battle record (with `conversation_a/b`), in vote order: what
        `export` writes, and what other packages read (finetune's --from-arena) instead of the tables."""
        return [battle.to_fastchat() for battle in self.battles()]

    def export(self, out: str | Path) -> int:
        """Write every battle as FastChat JSONL; returns the number written."""
        records = self.export_records()
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        tmp.replace(out)
        return len(records)


def read_battles_jsonl(path: str | Path) -> list[dict]:
    """Read battles in FastChat's format (one JSON object a line, `model_a`, `model_b`, `winner`
    required, ordered by `tstamp` when every line has one). Errors name the line."""
    path = Path(path)
    battles = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                battle = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(battle, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(battle).__name__}")
            try:
                check_battle(battle)
            except ValueError as error:
                raise ValueError(f"{path}:{number}: {error}") from None
            battles.append(battle)
    if not battles:
        raise ValueError(f"{path}: no battles in the file")
    if all(isinstance(b.get("tstamp"), (int, float)) for b in battles):
        battles.sort(key=lambda b: b["tstamp"])  # stable: equal times keep file order
    return battles

