"""Scoring variants: dataset reading with line numbers, error analysis, paired bootstrap, and the
`python -m eval score` run on the real SmolLM2 base and a real (tiny, perturbed) LoRA adapter."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_tiny_adapter

from eval.data import held_out_examples, read_examples
from eval.score import (
    answer_flags,
    error_analysis,
    paired_bootstrap,
    repeated_ngram_share,
)

ROOT = Path(__file__).resolve().parents[1]
IDENTITY_VARS = "name=Ada,author=Lovelace Labs"


def run_cli(*args, data_dir: Path | None = None, timeout: int = 300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if data_dir is not None:
        env["CHATAPP_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "eval", *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=timeout)


def test_reads_all_three_formats_with_placeholders_filled(corpus, tmp_path):
    identity = read_examples(corpus / "finetune" / "identity.json", {"name": "Ada", "author": "Lovelace Labs"})
    assert len(identity) == 91 and "{{" not in "".join(e.reference for e in identity)
    assert identity[0].messages == [{"role": "user", "content": "hi"}] and identity[1].line == 7
    (tmp_path / "chat.jsonl").write_text(
        json.dumps({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                                 {"role": "assistant", "content": "Hello."}]}) + "\n\n"
        + json.dumps({"conversations": [{"from": "human", "value": "Name?"}, {"from": "gpt", "value": "Ada."}]}) + "\n")
    chat = read_examples(tmp_path / "chat.jsonl")
    assert [e.reference for e in chat] == ["Hello.", "Ada."] and [e.line for e in chat] == [1, 3]
    assert chat[0].messages[0]["role"] == "system" and chat[1].prompt == "Name?"


def test_bad_records_are_reported_with_their_line(tmp_path):
    good = {"instruction": "Say hi", "input": "", "output": "Hi"}
    array = tmp_path / "data.json"
    array.write_text(json.dumps([good, good, {"instruction": "x", "input": ""}, good], indent=2))
    with pytest.raises(ValueError, match=r"data.json:12: missing field .output."):
        read_examples(array)
    lines = tmp_path / "data.jsonl"
    lines.write_text(f"{json.dumps(good)}\n{json.dumps(good)}\n{{broken\n")
    with pytest.raises(ValueError, match=r"data.jsonl:3: not valid JSON"):
        read_examples(lines)
    # the CLI says so in one line and exits non-zero before any model is loaded
    out = run_cli("score", "--data", str(array), "--variants", "base")
    assert out.returncode == 1 and out.stderr.startswith(f"error: {array}:12: ") and "Traceback" not in out.stderr
    out = run_cli("score", "--variants", "base")
    assert out.returncode == 1 and "--data" in out.stderr


def test_error_analysis_flags_empty_long_short_and_looping_answers():
    reference = "Paris is the capital of France."
    assert answer_flags("  ", reference) == ["empty"]
    assert answer_flags("Paris.", reference) == ["too_short"]
    loop = "the capital is the capital is the capital is the capital is the capital is"
    assert "repetitive" in answer_flags(loop, reference) and "too_long" in answer_flags(loop, reference)
    assert answer_flags("The capital of France is Paris.", reference) == []
    assert repeated_ngram_share("a b c d a b c d a b c d") > 0.5 > repeated_ngram_share(reference)
    report = error_analysis(["", "Paris.", reference], [reference] * 3)
    assert report["empty"]["count"] == 1 and report["too_short"]["examples"] == [1]


def test_paired_bootstrap_tells_a_real_difference_from_noise():
    better = [0.8, 0.7, 0.9, 0.6, 0.85, 0.75, 0.8, 0.9, 0.7, 0.65]
    worse = [b - 0.3 for b in better]
    test = paired_bootstrap(better, worse)
    assert test["ci95"][0] > 0 and test["p_value"] < 0.05 and test["mean_diff"] == pytest.approx(0.3)
    same = paired_bootstrap(better, better[1:] + better[:1])
    assert same["ci95"][0] < 0 < same["ci95"][1]


@pytest.fixture(scope="module")
def tiny_adapter_data(tmp_path_factory):
    """A scratch data folder with a real LoRA adapter (r=2), perturbed so it differs from the base."""
    from chatapp.settings import Settings

    settings = Settings.from_env(data_dir=tmp_path_factory.mktemp("score-data"))
    make_tiny_adapter(settings, seed=0, scale=0.2)
    return settings


def test_held_out_records_replay_finetunes_split(corpus, tiny_adapter_data):
    from finetune.data import read_records, split

    data = corpus / "finetune" / "identity.json"
    card = {"data": {"file": str(data), "template_vars": {"name": "Ada", "author": "Lovelace Labs"}, "test_size": 0.1},
            "hyperparameters": {"seed": 42}}
    (tiny_adapter_data.adapters_dir / "tiny" / "card.json").write_text(json.dumps(card))
    path, held_out = held_out_examples(tiny_adapter_data.adapters_dir / "tiny")
    expected = split(read_records(data, card["data"]["template_vars"]), 0.1, 42)[1]
    assert path == data and len(held_out) == len(expected) == 9
    assert [e.messages for e in held_out] == [e.prompt for e in expected]
    assert [e.reference for e in held_out] == [e.response for e in expected]


def test_score_cli_generates_scores_and_writes_predictions(corpus, tiny_adapter_data, tmp_path):
    records = json.loads((corpus / "finetune" / "identity.json").read_text())[2:4]  # "Who are you?" ...
    data = tmp_path / "identity-2.json"
    data.write_text(json.dumps(records))
    predictions = tmp_path / "predictions.jsonl"
    out = run_cli("score", "--data", str(data), "--template-vars", IDENTITY_VARS, "--variants", "base,tiny",
                  "--max-new-tokens", "8", "--bootstrap", "100", "--predictions-out", str(predictions), "--json",
                  data_dir=tiny_adapter_data.data_dir)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert set(result["variants"]) == {"base", "tiny"}
    assert result["warnings"] == []  # tiny's card names no file of this content
    for name, v in result["variants"].items():
        assert {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "errors", "ci95"} <= set(v)
        assert 0 <= v["rougeL"] <= 1 and 0 <= v["bleu"] <= 100 and v["n"] == 2
    assert {c["metric"] for c in result["comparisons"]} >= {"rougeL", "sentence_bleu"}
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["prompt"] == records[0]["instruction"]
    assert "Ada" in rows[0]["reference"] and set(rows[0]["answers"]) == {"base", "tiny"}
    # greedy decoding: the base answers are what the model layer produces for the same prompt
    from chatapp.generation import GenerationSettings
    from chatapp.model import ModelRegistry

    registry = ModelRegistry(tiny_adapter_data)
    direct = registry.generate([{"role": "user", "content": records[0]["instruction"]}], "base",
                               GenerationSettings(max_new_tokens=8)).strip()
    assert rows[0]["answers"]["base"]["text"] == direct
    assert rows[0]["answers"]["base"]["text"] != rows[0]["answers"]["tiny"]["text"]
    out = run_cli("score", "--data", str(data), "--variants", "base,nope", data_dir=tiny_adapter_data.data_dir)
    assert out.returncode == 1 and "unknown variant(s) nope" in out.stderr
