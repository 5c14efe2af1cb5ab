"""eval.metrics against rouge-score and sacrebleu themselves, on real answers from the corpus."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from eval.metrics import (
    ROUGE_TYPES,
    UnicodeTokenizer,
    bootstrap_interval,
    compute_metrics,
)

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pairs(corpus):
    """References: real Alpaca answers. Predictions: other real text of varied overlap (a truncated
    answer, a neighbouring record's answer, the answer itself), so precision, recall and BLEU all vary."""
    records = json.loads((corpus / "finetune" / "alpaca_en_demo.json").read_text())[:60]
    references = [r["output"] for r in records]
    predictions = []
    for i, ref in enumerate(references):
        if i % 3 == 0:
            predictions.append(ref[: len(ref) // 2])
        elif i % 3 == 1:
            predictions.append(references[i - 1])
        else:
            predictions.append(ref)
    return predictions, references


def test_rouge_and_bleu_are_the_libraries_values(pairs):
    predictions, references = pairs
    report = compute_metrics(predictions, references, n_bootstrap=200)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    direct = [scorer.score(r, p) for p, r in zip(predictions, references)]
    for t in ROUGE_TYPES:
        for part in ("precision", "recall", "fmeasure"):
            expected = float(np.mean([getattr(d[t], part) for d in direct]))
            assert report.rouge[t][part] == pytest.approx(expected, abs=1e-12)
    # a truncated answer is all reference words: precision high, recall low (so the target/prediction
    # order handed to rouge-score is the right one)
    first = scorer.score(references[0], predictions[0])["rouge1"]
    assert report.pairs.rouge["rouge1"]["precision"][0] == first.precision > first.recall
    assert report.bleu == pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score, abs=1e-12)
    sentence = [sacrebleu.sentence_bleu(p, [r]).score for p, r in zip(predictions, references)]
    assert report.sentence_bleu == pytest.approx(float(np.mean(sentence)), abs=1e-12)
    assert 0 < report.rouge["rouge2"]["fmeasure"] < 1 and 0 < report.bleu < 100
    assert report.n == len(predictions)


def test_intervals_surround_the_aggregates(pairs):
    predictions, references = pairs
    report = compute_metrics(predictions, references, n_bootstrap=300)
    for t in ROUGE_TYPES:
        low, high = report.rouge_ci[t]["fmeasure"]
        assert low < report.rouge[t]["fmeasure"] < high
    assert report.bleu_ci[0] < report.bleu < report.bleu_ci[1]
    assert report.sentence_bleu_ci[0] < report.sentence_bleu < report.sentence_bleu_ci[1]
    assert bootstrap_interval([0.5] * 10) == (0.5, 0.5)


HINDI = "मेरे नोट्स हिंदी में लिखे गए हैं और उनमें परियोजना का विवरण है"
HINDI_PARAPHRASE = "मेरे नोट्स हिंदी में हैं और उनमें परियोजना का पूरा विवरण है"
GREEK = "Οι σημειώσεις μου είναι γραμμένες στα ελληνικά"
GREEK_PARAPHRASE = "Οι σημειώσεις είναι γραμμένες στα ελληνικά"


def test_default_tokenizer_loses_hindi_and_greek_and_unicode_keeps_them():
    default = compute_metrics([HINDI_PARAPHRASE, GREEK_PARAPHRASE], [HINDI, GREEK], n_bootstrap=10)
    unicode = compute_metrics([HINDI_PARAPHRASE, GREEK_PARAPHRASE], [HINDI, GREEK], tokenizer="unicode", n_bootstrap=10)
    assert default.rouge["rouge1"]["fmeasure"] == 0.0
    assert 0.6 < unicode.rouge["rouge1"]["fmeasure"] < 1.0
    # the unicode tokenizer is handed to rouge-score itself, so its values are rouge-score's
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True, tokenizer=UnicodeTokenizer())
    assert unicode.pairs.rouge["rougeL"]["fmeasure"][0] == scorer.score(HINDI, HINDI_PARAPHRASE)["rougeL"].fmeasure
    # Devanagari vowel signs stay inside their words; Latin words are stemmed like the default
    assert UnicodeTokenizer().tokenize("हिंदी में, running!") == ["हिंदी", "में", "run"]
    assert UnicodeTokenizer().tokenize("你好") == ["你", "好"]


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "eval", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)


def test_metrics_cli_json_matches_the_library(pairs, tmp_path):
    predictions, references = pairs
    # one text per line: newlines inside an answer become spaces
    (tmp_path / "p.txt").write_text("\n".join(p.replace("\n", " ") for p in predictions) + "\n")
    (tmp_path / "r.txt").write_text("\n".join(r.replace("\n", " ") for r in references) + "\n")
    out = run_cli("metrics", "--predictions", str(tmp_path / "p.txt"), "--references", str(tmp_path / "r.txt"),
                  "--bootstrap", "100", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    flat_p = [p.replace("\n", " ") for p in predictions]
    flat_r = [r.replace("\n", " ") for r in references]
    assert data["n"] == len(predictions)
    assert set(data["rouge1"]) >= {"precision", "recall", "fmeasure"}
    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True)
    assert data["rougeLsum"]["recall"] == pytest.approx(
        np.mean([scorer.score(r, p)["rougeLsum"].recall for p, r in zip(flat_p, flat_r)]), abs=1e-12)
    assert data["bleu"] == pytest.approx(sacrebleu.corpus_bleu(flat_p, [flat_r]).score, abs=1e-9)


def test_metrics_cli_rejects_bad_files_with_the_line(tmp_path):
    (tmp_path / "good.txt").write_text("one\ntwo\nthree\n")
    (tmp_path / "short.txt").write_text("one\ntwo\n")
    (tmp_path / "binary.txt").write_bytes(b"one\ntwo\n\xff\xfe three\n")
    out = run_cli("metrics", "--predictions", str(tmp_path / "short.txt"), "--references", str(tmp_path / "good.txt"))
    assert out.returncode == 1
    assert out.stderr.strip().startswith(f"error: {tmp_path / 'short.txt'}:3:") and "Traceback" not in out.stderr
    out = run_cli("metrics", "--predictions", str(tmp_path / "binary.txt"), "--references", str(tmp_path / "good.txt"))
    assert out.returncode == 1 and "binary.txt:3: not UTF-8" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    out = run_cli("metrics", "--predictions", str(tmp_path / "missing.txt"), "--references", str(tmp_path / "good.txt"))
    assert out.returncode == 1 and "no such file" in out.stderr
    out = run_cli("metrics", "--help")
    assert out.returncode == 0 and "unicode" in out.stdout and "Hindi" in out.stdout
