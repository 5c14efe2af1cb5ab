"""bench/questions.jsonl, the evaluation question set, bench/unseen.jsonl, the questions written after
the tuning and never tuned on, and bench/fresh.jsonl and bench/later.jsonl, two further sets written blind
the same way: every answerable question's answer is in the text the loader stores for its source (on its
PDF page, in its JSONL record), and the sets have the shape the tuning and judging runs rely on. Fast: it
loads the corpus files, no model."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pytest

from loaders.documents import load

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ROOT / "bench" / "questions.jsonl"
UNSEEN = ROOT / "bench" / "unseen.jsonl"
FRESH = ROOT / "bench" / "fresh.jsonl"
LATER = ROOT / "bench" / "later.jsonl"
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
ANSWERABLE_KINDS = {"pdf", "html", "jsonl", "transcript"}
NO_SOURCE_KINDS = {"off_topic", "small_talk"}


def _rows(path: Path) -> list[dict]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


ROWS = _rows(QUESTIONS)
UNSEEN_ROWS = _rows(UNSEEN)
FRESH_ROWS = _rows(FRESH)
LATER_ROWS = _rows(LATER)
ANSWERABLE = [row for row in ROWS + UNSEEN_ROWS + FRESH_ROWS + LATER_ROWS if row.get("answer") is not None]


@lru_cache(maxsize=None)
def _docs(source: str):
    matches = [path for path in CORPUS.rglob(source) if path.is_file()]
    assert len(matches) == 1, f"{source}: expected one corpus file of that name, found {matches}"
    return load(matches[0])


def _text(row: dict) -> str:
    docs = _docs(row["source"])
    if row["kind"] == "pdf":
        docs = [d for d in docs if d.metadata.get("page") == row["page"]]
    elif row["kind"] == "jsonl":
        docs = [d for d in docs if d.metadata.get("record") == row["record"]]
    assert docs, f"{row['id']}: no stored text for {row['source']} at page={row.get('page')} record={row.get('record')}"
    return "\n".join(d.page_content for d in docs)


def test_corpus_present():
    assert CORPUS.is_dir(), f"the shared corpus is missing at {CORPUS}"


@pytest.mark.parametrize("row", ANSWERABLE, ids=[row["id"] for row in ANSWERABLE])
def test_answer_is_in_its_source(row):
    assert row["kind"] in ANSWERABLE_KINDS
    assert isinstance(row["answer"], str) and row["answer"].strip()
    assert row["question"].strip()
    if row["kind"] == "pdf":
        assert isinstance(row["page"], int) and row["page"] >= 1
    else:
        assert row["page"] is None
    if row["kind"] == "jsonl":
        assert isinstance(row["record"], int) and row["record"] >= 0
    assert row["answer"] in _text(row), f"{row['id']}: {row['answer']!r} is not in {row['source']}"


def test_ids_unique():
    ids = [row["id"] for row in ROWS + UNSEEN_ROWS + FRESH_ROWS + LATER_ROWS]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})


def test_shape():
    assert len(ANSWERABLE) >= 60
    assert sum(1 for row in ANSWERABLE if row["paraphrase"] is True) * 3 >= len(ANSWERABLE)
    assert len({row["source"] for row in ANSWERABLE if row["kind"] == "html"}) >= 8
    assert {row["split"] for row in ROWS} == {"tune", "holdout"}
    for row in ROWS:
        assert isinstance(row["paraphrase"], bool), row["id"]
        assert row["kind"] in ANSWERABLE_KINDS | NO_SOURCE_KINDS, row["id"]


@pytest.mark.parametrize("rows, split, earlier", [(UNSEEN_ROWS, "unseen", ROWS), (FRESH_ROWS, "fresh", ROWS + UNSEEN_ROWS),
                                                  (LATER_ROWS, "later", ROWS + UNSEEN_ROWS + FRESH_ROWS)],
                         ids=["unseen", "fresh", "later"])
def test_blind_set_shape(rows, split, earlier):
    """A set written after the others: its own split, and no fact an earlier set asks."""
    assert {row["split"] for row in rows} == {split}
    asked = {(row["source"], row["answer"]) for row in earlier if row.get("answer") is not None}
    assert not [row["id"] for row in rows if (row["source"], row["answer"]) in asked]  # no fact asked twice
    for row in rows:
        assert isinstance(row["paraphrase"], bool), row["id"]
        assert row["kind"] in ANSWERABLE_KINDS | NO_SOURCE_KINDS, row["id"]


@pytest.mark.parametrize("rows", [ROWS, UNSEEN_ROWS, FRESH_ROWS, LATER_ROWS], ids=["questions", "unseen", "fresh", "later"])
def test_no_source_questions(rows):
    rows = [row for row in rows if row["kind"] in NO_SOURCE_KINDS]
    assert {row["kind"] for row in rows} == NO_SOURCE_KINDS
    for row in rows:
        assert row["source"] is None and row["page"] is None and row["answer"] is None, row["id"]
