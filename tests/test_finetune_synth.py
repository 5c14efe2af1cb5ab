"""`python -m finetune synth` on the real components: a real page ingested with `python -m loaders ingest`
into a scratch store, pairs written by the real embedded SmolLM2, read back as a fine-tune dataset."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = "daringfireball-1.html"  # the smallest page in the corpus: a few chunks, so a few generations


def run(*args: str) -> subprocess.CompletedProcess:
    """A CLI in a fresh process; CHATAPP_DATA_DIR (data_dir fixture) and CHATAPP_MODELS_DIR (conftest) come
    from this process's environment."""
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_synth_writes_sourced_pairs_without_repeated_questions(data_dir, corpus, tmp_path):
    ingested = run("loaders", "ingest", str(corpus / "html" / PAGE), "--json")
    assert ingested.returncode == 0, ingested.stderr[-3000:]
    chunks = json.loads(ingested.stdout.splitlines()[0])["chunks"]
    assert chunks > 0

    out = tmp_path / "pairs.jsonl"
    synth = run("finetune", "synth", "--out", str(out), "--n", "3", "--max_new_tokens", "96", "--json")
    assert synth.returncode == 0, synth.stderr[-3000:]
    summary = json.loads(synth.stdout.strip().splitlines()[-1])
    assert summary["out"] == str(out) and summary["passages_in_store"] == chunks
    assert 1 <= summary["pairs"] <= 3 and summary["passages_tried"] <= min(chunks, 9)  # at most 3 passages a pair

    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == summary["pairs"]
    for record in records:
        assert {"instruction", "input", "output", "source"} <= set(record), record
        assert record["instruction"].strip() and record["output"].strip() and record["input"] == ""
        assert record["source"] == PAGE
        assert "page" not in record  # an HTML page has no page numbers
    questions = [" ".join(re.findall(r"\w+", r["instruction"].lower())) for r in records]
    assert len(set(questions)) == len(questions), questions

    # what synth writes is a dataset `python -m finetune --data` accepts
    from finetune.data import read_records

    examples = read_records(out)
    assert len(examples) == len(records)


def test_pair_parsing_keeps_real_questions_and_whole_sentences():
    from finetune.synth import parse_answer, parse_pair

    assert parse_pair("Question: How many layers does the encoder have?\nAnswer: Six layers [1].") == (
        "How many layers does the encoder have?", "Six layers [1].")
    # the small model often stops at "Answer:": the question is kept, the answer is asked for separately
    assert parse_pair("Question: What optimizer was used?\n\nAnswer:") == ("What optimizer was used?", None)
    assert parse_pair("Question: How does the passage answer the question?\nAnswer: It does.")[0] is None
    assert parse_pair("The Transformer is a model.") == (None, None)
    assert parse_answer("Answer: It uses Adam. The learning rate then var") == "It uses Adam."
    assert parse_answer("Question: Another one?") is None
    assert parse_answer("same\nsame\nsame\nsame") is None
