"""Preference tuning: TRL's preference format, pairs from a real arena store, the short-run warning,
and DPO on the real embedded SmolLM2 (CPU, a few steps) moving an adapter towards the chosen answers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from chatapp.datasets import DatasetError, read_preferences
from chatapp.settings import Settings
from eval.arena import ArenaStore, Battle
from finetune.preference import arena_pairs
from finetune.train import MIN_OPTIMIZER_STEPS, check_run_length

ROOT = Path(__file__).resolve().parents[1]
FACTS = [("What is the capital of France?", "Paris."), ("What is 2 plus 3?", "5."), ("What colour is the sky?", "Blue."),
         ("How many legs does a spider have?", "Eight."), ("What is the opposite of hot?", "Cold."),
         ("Which planet is closest to the sun?", "Mercury."), ("What do bees make?", "Honey."),
         ("What is frozen water called?", "Ice."), ("How many days are in a week?", "Seven."),
         ("What is the largest ocean?", "The Pacific."), ("What gas do plants breathe in?", "Carbon dioxide."),
         ("What language is spoken in Spain?", "Spanish.")]
DODGE = "I am not sure, sorry."


def record_votes(store: ArenaStore) -> None:
    """12 decisive votes (the factual answer wins, on alternating sides), one tie, one 'both bad'."""
    for i, (question, fact) in enumerate(FACTS):
        if i % 2:
            store.record_vote(Battle(model_a="base", model_b="tuned", winner="model_a", prompt=question,
                                     answer_a=fact, answer_b=DODGE))
        else:
            store.record_vote(Battle(model_a="tuned", model_b="base", winner="model_b", prompt=question,
                                     answer_a=DODGE, answer_b=fact))
    store.record_vote(Battle(model_a="base", model_b="tuned", winner="tie", prompt="Hi", answer_a="Hello", answer_b="Hey"))
    store.record_vote(Battle(model_a="tuned", model_b="base", winner="tie (bothbad)", prompt="Yo", answer_a="?",
                             answer_b="!"))


def test_preference_format_text_messages_implicit_prompt_json_and_jsonl(tmp_path):
    text = {"prompt": "Name a colour.", "chosen": "Red.", "rejected": "No."}
    messages = {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
                "chosen": [{"role": "assistant", "content": "Red."}], "rejected": [{"role": "assistant", "content": "No."}]}
    implicit = {"chosen": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."}],
                "rejected": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "No."}]}
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (text, messages, implicit)))
    (tmp_path / "p.json").write_text(json.dumps([text, messages, implicit]))
    for name in ("p.jsonl", "p.json"):
        pairs = read_preferences(tmp_path / name)
        assert [p.chosen for p in pairs] == ["Red."] * 3 and [p.rejected for p in pairs] == ["No."] * 3
        assert pairs[0].prompt == pairs[2].prompt == [{"role": "user", "content": "Name a colour."}]
        assert pairs[1].prompt[0] == {"role": "system", "content": "Be brief."}
        assert pairs[0].to_trl()["chosen"] == [{"role": "assistant", "content": "Red."}]
    (tmp_path / "bad.jsonl").write_text(json.dumps(text) + "\n" + json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    with pytest.raises(DatasetError, match=r"bad.jsonl: record 2 \(line 2\): missing field 'rejected'"):
        read_preferences(tmp_path / "bad.jsonl")


def test_from_arena_reads_the_votes_a_real_arena_store_recorded(tmp_path):
    settings = Settings.from_env(data_dir=tmp_path / "data")
    store = ArenaStore(settings.arena_db)
    record_votes(store)
    # answered from documents: the passages are not in the prompt, so the pair would teach stating them blind
    store.record_vote(Battle(model_a="base", model_b="tuned", winner="model_a", prompt="How many layers?",
                             answer_a="6 layers.\n\nSources: [1] paper, p. 3", answer_b="Many.", rag=True))
    found = arena_pairs(settings)  # through ArenaStore.export_records, FastChat's conversation_a/b
    assert found.battles == 15 and len(found.pairs) == 12
    assert found.skipped == {"ties": 1, "both bad": 1, "answered from documents": 1}
    assert {p.chosen for p in found.pairs} == {fact for _, fact in FACTS}  # the winner's answer, either side
    assert {p.rejected for p in found.pairs} == {DODGE}
    assert found.pairs[0].prompt == [{"role": "user", "content": FACTS[0][0]}]
    assert str(found).startswith("12 preference pairs from 15 arena battles (skipped: 1 ties, 1 both bad, "
                                 "1 answered from documents)")


def test_a_run_too_short_to_learn_warns_with_a_suggestion(capsys):
    args = SimpleNamespace(max_steps=-1, per_device_train_batch_size=8, gradient_accumulation_steps=1, world_size=1,
                           num_train_epochs=3.0)
    assert check_run_length(16, args) == 6
    line = capsys.readouterr().out
    assert line.startswith("warning: this run takes only 6 optimizer steps (16 examples, 8 per step, 3 epochs)")
    assert f"--num_train_epochs {MIN_OPTIMIZER_STEPS // 2}" in line
    assert check_run_length(200, args) == 75 and capsys.readouterr().out == ""  # long enough: silent
    args.max_steps = 3
    check_run_length(200, args)
    assert f"Try --max_steps {MIN_OPTIMIZER_STEPS}" in capsys.readouterr().out


def sequence_logp(model, tokenizer, prompt: list[dict], answer: str) -> float:
    """Sum of the answer's token log-probabilities after the chat-templated prompt."""
    head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=True,
                                         return_dict=True)["input_ids"]
    ids = torch.tensor([full])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
    return float(logp[len(head) - 1:].sum())


@pytest.mark.slow
def test_dpo_from_arena_moves_a_tiny_adapter_towards_the_chosen_answers(tmp_path):
    from peft import PeftModel

    from chatapp.loading import load_base

    data = tmp_path / "data"
    settings = Settings.from_env(data_dir=data)
    record_votes(ArenaStore(settings.arena_db))
    # One OpenMP thread: on the shared 2-core test machines (load 5-7) two spinning OpenMP threads made each
    # step ~8x slower (34 s against 4 s a step measured); on an idle machine it costs little at this size.
    env = {**os.environ, "CHATAPP_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "finetune", "--method", "dpo", "--from_arena", "--name", "prefs", "--lora_r", "4",
         "--max_steps", "8", "--per_device_train_batch_size", "2", "--learning_rate", "1e-3", "--test_size", "2",
         "--eval_strategy", "no", "--save_strategy", "no", "--eval_generate_samples", "0", "--logging_steps", "2",
         "--disable_tqdm", "true", "--json"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "--from_arena: 12 preference pairs from 14 arena battles (skipped: 1 ties, 1 both bad)" in run.stdout
    assert "warning: this run takes only 8 optimizer steps" in run.stdout  # fired before the model loaded
    card = json.loads(run.stdout[run.stdout.index("{\n"):])
    assert card["method"] == "dpo" and card["adapter"] == "lora" and card["training"]["optimizer_steps"] == 8
    assert card["data"]["train_pairs"] == 10 and card["data"]["from_arena"]["skipped"] == {"ties": 1, "both bad": 1}
    held = card["held_out"]  # the two pairs never trained on
    assert held["reward_accuracy"] == 1.0 and held["reward_margin"] > 0

    # Independently of TRL's numbers: the chosen answers gained log-probability over the rejected ones.
    model, tokenizer, _ = load_base(settings)
    pairs = arena_pairs(settings).pairs
    base = [sequence_logp(model, tokenizer, p.prompt, p.chosen) - sequence_logp(model, tokenizer, p.prompt, p.rejected)
            for p in pairs]
    tuned_model = PeftModel.from_pretrained(model, str(settings.adapters_dir / "prefs"))
    tuned = [sequence_logp(tuned_model, tokenizer, p.prompt, p.chosen)
             - sequence_logp(tuned_model, tokenizer, p.prompt, p.rejected) for p in pairs]
    assert all(t > b for t, b in zip(tuned, base)), (base, tuned)
    assert sum(tuned) / len(tuned) > sum(base) / len(base) + 2.0


def test_method_picks_trl_config_and_flags_are_checked(tmp_path, monkeypatch):
    from finetune.config import (
        DPOTrainConfig,
        FinetuneConfig,
        ORPOTrainConfig,
        TrainConfig,
        parse,
    )

    monkeypatch.setenv("CHATAPP_DATA_DIR", str(tmp_path))
    config, args = parse(["--method", "dpo", "--from_arena", "--name", "v", "--beta", "0.3"])
    assert isinstance(args, DPOTrainConfig) and args.beta == 0.3 and args.learning_rate == 2e-4
    assert config.adapter_method() == ("qlora" if torch.cuda.is_available() else "lora")
    assert not args.gradient_checkpointing and args.num_train_epochs == 0  # our small-run defaults, not TRL's
    assert isinstance(parse(["--method", "orpo", "--data", "p.jsonl", "--name", "v"])[1], ORPOTrainConfig)
    assert isinstance(parse(["--data", "d.json", "--name", "v"])[1], TrainConfig)
    for kwargs, reason in ((dict(method="lora", from_arena=True), "use it with --method dpo"),
                           (dict(method="dpo", from_arena=True, data="p.jsonl"), "not both"),
                           (dict(method="dpo"), r"--data FILE is required \(or --from_arena\)"),
                           (dict(method="dpo", data="p.jsonl", data_fractions="0.5,1"), "not dpo/orpo")):
        with pytest.raises(ValueError, match=reason):
            FinetuneConfig(name="v", **kwargs)
    with pytest.raises(ValueError, match=r"numbers in \(0, 1\]"):
        FinetuneConfig(name="v", data="d.json", data_fractions="0,2").fractions()
    assert FinetuneConfig(name="v", data="d.json", data_fractions="1,0.25,0.5").fractions() == [0.25, 0.5, 1.0]
