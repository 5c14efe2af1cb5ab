"""Fine-tuning on the real embedded SmolLM2 and the real corpus data, kept short (few steps, short rows)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chatapp.loading import load_base
from chatapp.model import ModelRegistry
from chatapp.settings import Settings
from finetune.config import FinetuneConfig, resolve_epochs, training_arguments
from finetune.attention import PACKED_ATTENTION
from finetune.data import DatasetError, read_records, split, to_dataset
from finetune.train import FinetuneTrainer, generate_answers, load_model, peft_config_for, train

ROOT = Path(__file__).resolve().parents[1]
IDENTITY_VARS = "name=Ada,author=Lovelace Labs"
QUESTION = [{"role": "user", "content": "Who are you?"}]
# Small and quick: rows of at most 128 tokens, a couple of answers generated per evaluation.
QUICK = dict(max_length=96, per_device_train_batch_size=2, per_device_eval_batch_size=8, logging_steps=1,
             dataloader_pin_memory=False, disable_tqdm=True)
QUICK_CONFIG = dict(eval_generate_samples=2, eval_max_new_tokens=12, forgetting_samples=2)


def env(data_dir: Path) -> dict:
    return {**os.environ, "CHATAPP_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def run_config(data_dir: Path, corpus: Path, name: str, **overrides) -> FinetuneConfig:
    values = dict(data=str(corpus / "finetune" / "identity.json"), name=name, template_vars=IDENTITY_VARS,
                  data_dir=str(data_dir), **QUICK_CONFIG)
    values.update(overrides)
    return FinetuneConfig(**values)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("finetune-data")


# ---------------------------------------------------------------------------------------------
# Data


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("name, text, reason", [
    ("missing.json", '[{"instruction": "hi", "output": "hello"}, {"instruction": "bye"}]',
     "record 2: missing field 'output'"),
    ("empty.json", '[{"instruction": "hi", "input": "", "output": "   "}]', "record 1: empty response"),
    ("broken.jsonl", '{"instruction": "hi", "output": "hello"}\n\n{"instruction": "bye", "output": \n',
     "record 2 (line 3): not JSON"),
    ("broken.json", '[{"instruction": "hi", "output": "hello"},', "not JSON"),
    ("unknown.json", '[{"question": "hi", "answer": "hello"}]', "record 1: unknown format (keys: answer, question)"),
    ("turns.json", '[{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}]',
     "record 1: missing field 'messages[1].content'"),
    ("sharegpt.json", '[{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": ""}]}]',
     "record 1: empty response"),
])
def test_bad_datasets_stop_with_record_and_reason(tmp_path, name, text, reason):
    with pytest.raises(DatasetError) as error:
        read_records(write(tmp_path / name, text))
    assert reason in str(error.value)
    assert name in str(error.value)


def test_the_three_formats_give_the_same_example(tmp_path):
    alpaca = write(tmp_path / "a.json", json.dumps([{"instruction": "Name a colour.", "input": "", "output": "Red."}]))
    messages = write(tmp_path / "m.jsonl", json.dumps({"messages": [
        {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."}]}) + "\n")
    sharegpt = write(tmp_path / "s.json", json.dumps([{"conversations": [
        {"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Red."}]}]))
    examples = [read_records(p)[0] for p in (alpaca, messages, sharegpt)]
    assert examples[0] == examples[1] == examples[2]
    assert examples[0].prompt == [{"role": "user", "content": "Name a colour."}] and examples[0].response == "Red."


def test_template_vars_and_a_reproducible_split(corpus):
    examples = read_records(corpus / "finetune" / "identity.json", {"name": "Ada", "author": "Lovelace Labs"})
    assert len(examples) == 91
    assert not any("{{" in e.response for e in examples)
    assert "Ada" in examples[2].response and "Lovelace Labs" in examples[2].response
    train_a, test_a = split(examples, 0.1, seed=42)
    train_b, test_b = split(examples, 0.1, seed=42)
    assert test_a == test_b and len(test_a) == 9 and len(train_a) == 82
    assert split(examples, 0.1, seed=7)[1] != test_a
    assert not {json.dumps(e.prompt) + e.response for e in test_a} & {json.dumps(e.prompt) + e.response for e in train_a}


def test_cli_fails_on_bad_data_with_one_line_and_nonzero_exit(tmp_path):
    bad = write(tmp_path / "bad.jsonl", '{"instruction": "hi", "output": "hello"}\nnot json\n')
    result = subprocess.run([sys.executable, "-m", "finetune", "--data", str(bad), "--name", "x"],
                            capture_output=True, text=True, env=env(tmp_path / "data"), cwd=ROOT, timeout=300)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "record 2 (line 2): not JSON" in last
    assert not (tmp_path / "data" / "adapters" / "x").exists()


def test_help_lists_training_arguments_and_method_options():
    result = subprocess.run([sys.executable, "-m", "finetune", "--help"], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=ROOT, timeout=300)
    assert result.returncode == 0
    for flag in ("--data", "--name", "--method", "--lora_r", "--lora_alpha", "--lora_dropout", "--target_modules",
                 "--num_virtual_tokens", "--prompt_tuning_init_text", "--test_size", "--output_dir",
                 "--num_train_epochs", "--max_steps", "--per_device_train_batch_size", "--per_device_eval_batch_size",
                 "--gradient_accumulation_steps", "--learning_rate", "--logging_dir", "--logging_steps",
                 "--save_steps", "--save_total_limit", "--eval_strategy", "--eval_steps", "--load_best_model_at_end",
                 "--metric_for_best_model", "--greater_is_better", "--seed", "--resume_from_checkpoint", "--packing"):
        assert flag in result.stdout, flag


def test_defaults_need_only_data_and_name(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATAPP_DATA_DIR", str(tmp_path))
    config = FinetuneConfig(data="d.json", name="n")
    args = training_arguments(config)
    assert Path(args.output_dir) == tmp_path / "runs" / "n"
    assert config.resolved_method() == ("qlora" if torch.cuda.is_available() else "lora")
    assert args.learning_rate == 3e-4 and args.num_train_epochs == 0  # 0: chosen by dataset size at the start
    assert args.per_device_train_batch_size == 4 and args.padding_free is None  # None: decided from the data
    assert resolve_epochs(args, 82) and args.num_train_epochs == 2  # 21 steps an epoch at batch 4 -> 42 steps
    small = training_arguments(config)
    assert resolve_epochs(small, 16) and small.num_train_epochs == 10  # 4 steps an epoch -> 40 steps
    big = training_arguments(config)
    assert resolve_epochs(big, 5000) and big.num_train_epochs == 1  # one pass is already 1250 steps
    fixed = training_arguments(config, max_steps=40)
    assert not resolve_epochs(fixed, 82) and fixed.num_train_epochs == 0  # max_steps decides
    assert args.load_best_model_at_end and args.metric_for_best_model == "eval_loss" and not args.greater_is_better


# ---------------------------------------------------------------------------------------------
# Training


@pytest.fixture(scope="module")
def lora_run(data_root, corpus):
    """LoRA on identity.json: 6 steps, evaluation and a checkpoint every 2, at most 1 checkpoint kept."""
    config = run_config(data_root, corpus, "ada-lora", method="lora", test_size=4)  # 4 held out: quick evals
    args = training_arguments(config, max_steps=6, learning_rate=2e-3, eval_strategy="steps", eval_steps=2,
                              save_total_limit=1, metric_for_best_model="eval_loss", **QUICK)
    path = train(config, args)
    return config, args, path


def test_lora_adapter_is_saved_with_its_card(lora_run, corpus):
    config, args, path = lora_run
    assert (path / "adapter_config.json").is_file() and (path / "adapter_model.safetensors").is_file()
    card = json.loads((path / "card.json").read_text())
    assert card["method"] == "lora" and card["hyperparameters"]["lora_r"] == 16
    # 96 tokens cut some identity records, and TRL truncates only padded batches: so these were padded.
    assert card["data"]["summary"]["truncated"] > 0 and card["hyperparameters"]["padding_free"] is False
    assert card["data"]["sha256"] and card["data"]["train_examples"] == 87 and card["data"]["test_examples"] == 4
    assert card["training"]["tokens"] > 0 and card["training"]["tokens_per_second"] > 0
    assert card["training"]["peak_memory_mb"] > 0 and card["training"]["seconds"] > 0
    assert "eval_loss" in card["metrics"] and "eval_rougeL" in card["metrics"]
    forgetting = card["forgetting"]
    assert forgetting["records"] == 2 and 0 <= forgetting["base_rougeL"] <= 1 and 0 <= forgetting["adapter_rougeL"] <= 1
    log = [json.loads(line) for line in (Path(args.output_dir) / "log.jsonl").read_text().splitlines()]
    assert any("loss" in e for e in log) and any("eval_rougeL" in e for e in log)
    assert (Path(args.output_dir) / "train.log").read_text().count("step ") >= 6


def test_padding_free_default_gives_the_padded_loss(data_root, corpus):
    """With no record over max_length the default puts each batch in one row; through the real Trainer its first
    loss equals that of the same batch padded (transformers masks the examples off from each other)."""
    losses = {}
    for name, chosen in (("free", {}), ("padded", {"padding_free": False})):
        config = run_config(data_root, corpus, f"ada-{name}", test_size=0, forgetting_samples=0)
        args = training_arguments(config, max_steps=1, per_device_train_batch_size=4, logging_steps=1,
                                  max_length=512, report_to="none", disable_tqdm=True, **chosen)
        card = json.loads((train(config, args) / "card.json").read_text())
        assert card["hyperparameters"]["padding_free"] is (name == "free")
        assert card["data"]["summary"]["truncated"] == 0
        log = [json.loads(line) for line in (Path(args.output_dir) / "log.jsonl").read_text().splitlines()]
        losses[name] = next(e["loss"] for e in log if "loss" in e)
    assert losses["free"] == pytest.approx(losses["padded"], rel=1e-3)


def test_labelled_only_head_gives_trls_loss_entropy_and_accuracy(data_root, corpus):
    """The CPU path that projects only the labelled positions logs what TRL's fused head logs on the same
    padding-free batch: the loss, the entropy, the token accuracy and the token count."""
    config = run_config(data_root, corpus, "ada-head", test_size=0, forgetting_samples=0)
    args = training_arguments(config, max_steps=1, per_device_train_batch_size=4, report_to="none",
                              padding_free=True, max_length=None, disable_tqdm=True)
    model, tokenizer = load_model(config, args, "lora")
    trainer = FinetuneTrainer(model=model, args=args, processing_class=tokenizer,
                              train_dataset=to_dataset(read_records(config.data, config.variables())[:8]),
                              peft_config=peft_config_for(config, "lora", ""))
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and "position_ids" in batch  # one padding-free row
    trainer.model.train()
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    gradients = []
    for labelled_only in (False, True):
        trainer.labelled_logits_only = labelled_only
        trainer.model.zero_grad()
        with trainer.compute_loss_context_manager():
            loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        gradients.append(torch.cat([p.grad.flatten() for p in trainable if p.grad is not None]))
        trainer.log({"loss": loss.item()})
    fused, labelled = trainer.state.log_history[-2:]
    assert labelled["loss"] == pytest.approx(fused["loss"], rel=1e-4)
    assert labelled["entropy"] == pytest.approx(fused["entropy"], rel=1e-3)
    assert labelled["mean_token_accuracy"] == pytest.approx(fused["mean_token_accuracy"], abs=0.01)
    assert torch.nn.functional.cosine_similarity(*gradients, dim=0) > 0.999  # the same update
    assert labelled["num_tokens"] == fused["num_tokens"] == batch["input_ids"].shape[1]


def test_loraplus_gives_the_b_matrices_the_larger_step(data_root, corpus):
    config = run_config(data_root, corpus, "ada-plus", test_size=0, forgetting_samples=0, loraplus_lr_ratio=16)
    args = training_arguments(config, max_steps=1, learning_rate=1e-4, report_to="none", disable_tqdm=True)
    model, tokenizer = load_model(config, args, "lora")
    trainer = FinetuneTrainer(model=model, args=args, processing_class=tokenizer, loraplus_lr_ratio=16,
                              train_dataset=to_dataset(read_records(config.data, config.variables())[:4]),
                              peft_config=peft_config_for(config, "lora", ""))
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    steps = {names[id(p)].split(".lora_")[1][0]: group["lr"] for group in trainer.create_optimizer().param_groups
             for p in group["params"]}
    assert steps == {"A": pytest.approx(1e-4), "B": pytest.approx(16e-4)}


def test_best_checkpoint_and_save_total_limit_follow_transformers(lora_run):
    config, args, path = lora_run
    state = json.loads((Path(args.output_dir) / "checkpoint-6" / "trainer_state.json").read_text())
    evals = {e["step"]: e["eval_loss"] for e in state["log_history"] if "eval_loss" in e}
    assert sorted(evals) == [2, 4, 6]
    best_step = min(evals, key=evals.get)
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best_step}")
    kept = sorted(p.name for p in Path(args.output_dir).glob("checkpoint-*"))
    # save_total_limit=1 with load_best_model_at_end keeps the best checkpoint and the last one (transformers' rule).
    assert kept == sorted({f"checkpoint-{best_step}", "checkpoint-6"})
    card = json.loads((path / "card.json").read_text())
    assert card["metrics"]["eval_loss"] == pytest.approx(evals[best_step])
    assert card["training"]["best_checkpoint"] == state["best_model_checkpoint"]


def test_adapter_reloads_with_peft_and_changes_answers(lora_run, data_root):
    from peft import PeftModel

    settings = Settings.from_env(data_dir=data_root)
    model, tokenizer, _ = load_base(settings)
    before = generate_answers(model, tokenizer, [QUESTION], max_new_tokens=16)[0]
    tuned = PeftModel.from_pretrained(model, lora_run[2])
    after = generate_answers(tuned, tokenizer, [QUESTION], max_new_tokens=16)[0]
    assert before != after, (before, after)
    registry = ModelRegistry(settings)
    assert "ada-lora" in registry.variants()  # appears as a chat variant with no restart


def test_resume_from_checkpoint_continues_the_run(lora_run, data_root, corpus):
    config, args, _ = lora_run
    config = run_config(data_root, corpus, "ada-lora", method="lora", test_size=4, overwrite=True)
    resumed = training_arguments(config, max_steps=8, learning_rate=2e-3, eval_strategy="steps", eval_steps=2,
                                 save_total_limit=1, output_dir=args.output_dir,
                                 resume_from_checkpoint=str(Path(args.output_dir) / "checkpoint-6"), **QUICK)
    path = train(config, resumed)
    card = json.loads((path / "card.json").read_text())
    assert card["training"]["steps"] == 8
    state = json.loads((Path(args.output_dir) / "checkpoint-8" / "trainer_state.json").read_text())
    steps = [e["step"] for e in state["log_history"] if "loss" in e]
    assert steps == sorted(steps) and steps[-1] == 8
    # The resumed part started at step 7: two training steps, not eight, were run in this call.
    assert card["training"]["train_runtime"] is not None
    log = [json.loads(line) for line in (Path(args.output_dir) / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e][-2:] == [7, 8]


def test_qlora_runs_on_4bit_nf4_base(data_root, corpus):
    config = run_config(data_root, corpus, "ada-qlora", method="qlora", forgetting_samples=0)
    # One step: 4-bit matmuls on CPU dequantise in Python-side bitsandbytes code, ~4x slower than fp32.
    args = training_arguments(config, max_steps=1, eval_strategy="no", **{**QUICK, "max_length": 64})
    path = train(config, args)
    card = json.loads((path / "card.json").read_text())
    assert card["method"] == "qlora" and card["hyperparameters"]["quantization"].startswith("nf4")
    assert card["metrics"]["train_loss"] > 0
    adapter = json.loads((path / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["r"] == 16


def test_prompt_tuning_saves_a_soft_prompt_that_changes_answers(data_root, corpus):
    from peft import PeftModel

    config = run_config(data_root, corpus, "ada-prompt", method="prompt-tuning", num_virtual_tokens=8,
                        prompt_tuning_init_text="You are Ada, made by Lovelace Labs.", forgetting_samples=0)
    args = training_arguments(config, max_steps=2, eval_strategy="no", **QUICK)
    path = train(config, args)
    adapter = json.loads((path / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "PROMPT_TUNING" and adapter["num_virtual_tokens"] == 8
    model, tokenizer, _ = load_base(Settings.from_env(data_dir=data_root))
    before = generate_answers(model, tokenizer, [QUESTION], max_new_tokens=12)[0]
    after = generate_answers(PeftModel.from_pretrained(model, path), tokenizer, [QUESTION], max_new_tokens=12)[0]
    assert before != after


@pytest.mark.parametrize("attention", [None, PACKED_ATTENTION])
def test_packed_examples_do_not_attend_to_each_other(data_root, corpus, attention):
    """TRL's padding-free collation (used by --packing and padding_free) gives each example the same logits as
    alone, with transformers' block-diagonal mask and with the per-example attention CPU training loads."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model, tokenizer, _ = load_base(Settings.from_env(data_dir=data_root), attention=attention)
    texts = ["<|im_start|>user\nWho are you?<|im_end|>\n", "<|im_start|>user\nName three fruits please.<|im_end|>\n"]
    ids = [tokenizer(t)["input_ids"] for t in texts]
    packed = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(
        [{"input_ids": i} for i in ids])
    assert "attention_mask" not in packed and packed["position_ids"][0, len(ids[0])] == 0
    with torch.no_grad():
        # use_cache=False as SFTTrainer.compute_loss passes: a cache turns off transformers' packed-sequence mask.
        together = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits[0]
        alone = [model(input_ids=torch.tensor([i])).logits[0] for i in ids]
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-4, rtol=1e-4)


def test_two_processes_on_gloo_give_the_same_adapter_and_a_falling_loss(data_root, corpus, tmp_path):
    data_dir = tmp_path / "data"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
               "-m", "finetune", "--data", str(corpus / "finetune" / "identity.json"), "--name", "ddp",
               "--method", "lora", "--template_vars", IDENTITY_VARS, "--max_steps", "4", "--learning_rate", "2e-3",
               "--per_device_train_batch_size", "2", "--max_length", "96", "--logging_steps", "1",
               "--eval_strategy", "no", "--forgetting_samples", "0", "--disable_tqdm", "true", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**env(data_dir), "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    path = data_dir / "adapters" / "ddp"
    card = json.loads((path / "card.json").read_text())
    assert card["hyperparameters"]["world_size"] == 2
    assert sorted(p.name for p in path.iterdir() if p.name.startswith("adapter_")) == [
        "adapter_config.json", "adapter_model.safetensors"]
    log = [json.loads(line) for line in (data_dir / "runs" / "ddp" / "log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in log if "loss" in e]
    assert len(losses) == 4 and losses[-1] < losses[0]


def test_merge_writes_a_standalone_model_with_the_adapter_folded_in(lora_run, data_root, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from finetune.merge import merge

    settings = Settings.from_env(data_dir=data_root)
    out = merge("ada-lora", tmp_path / "merged", dtype="float32", settings=settings)
    merged = AutoModelForCausalLM.from_pretrained(out)
    model, tokenizer, _ = load_base(settings)
    tuned = PeftModel.from_pretrained(model, lora_run[2])
    ids = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        torch.testing.assert_close(merged(**ids).logits, tuned(**ids).logits, atol=2e-3, rtol=1e-3)
    assert not any("lora" in k for k in merged.state_dict())
