"""Preference tuning (DPO, ORPO): pairs in, a LoRA adapter with its card under DATA/adapters/NAME out.

Shares SFT's rules (finetune/train.py): the same base and precision (4-bit NF4 + LoRA on CUDA, full
precision + LoRA on CPU), the same LoRA options, held-out split, run logs, checkpoints and card. The
trainer is TRL's, one module per method (finetune/dpo.py, finetune/orpo.py), each built from its config.
With --from_arena the pairs come from the arena's votes, read through eval's export (never its tables).
"""
from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from chatapp.datasets import file_sha256
from chatapp.loading import BUILDING, base_folder
from chatapp.adapters import TRAINER_ARGS_FILE, write_card
from finetune.config import FinetuneConfig, resolve_epochs
from finetune.data import (
    DatasetError,
    Example,
    Preference,
    read_preferences,
    split,
    to_preference_dataset,
)
from finetune.train import (
    RunLog,
    adapter_path,
    check_run_length,
    load_model,
    log_to,
    peak_memory_mb,
    peft_config_for,
    run_trainer,
    say,
    score_examples,
)

MIN_ARENA_PAIRS = 8  # fewer decisive votes than this teach nothing measurable; the Arena tab offers training from here


@dataclass
class ArenaPairs:
    pairs: list[Preference]
    battles: int
    skipped: dict[str, int]  # reason -> count

    def __str__(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in self.skipped.items() if n) or "none"
        return f"{len(self.pairs)} preference pairs from {self.battles} arena battles (skipped: {skipped})"


def _last_answer(conversation) -> tuple[list[dict], str] | None:
    """(the turns before the last assistant answer, that answer) of a FastChat conversation."""
    if not isinstance(conversation, list) or not conversation:
        return None
    last = conversation[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant" or not isinstance(last.get("content"), str):
        return None
    prompt = [{"role": t.get("role"), "content": t.get("content")} for t in conversation[:-1] if isinstance(t, dict)]
    return prompt, last["content"]


def pairs_from_battles(records: list[dict]) -> ArenaPairs:
    """Preference pairs from FastChat battle records (`conversation_a/b`, `winner`): the winner's answer
    is chosen and the loser's rejected; ties, 'both bad', battles answered from documents (`rag`) and
    battles without two usable answers are skipped."""
    pairs, skipped = [], Counter({"ties": 0, "both bad": 0})
    for record in records:
        winner = record.get("winner")
        if winner == "tie":
            skipped["ties"] += 1
            continue
        if winner == "tie (bothbad)":
            skipped["both bad"] += 1
            continue
        if record.get("rag"):
            # Answered from documents: the passages the answers rest on are not in the battle's prompt, so
            # training on them would teach the model to state document facts without the documents.
            skipped["answered from documents"] += 1
            continue
        a, b = _last_answer(record.get("conversation_a")), _last_answer(record.get("conversation_b"))
        if a is None or b is None or not a[0] or a[0] != b[0] or a[0][-1]["role"] != "user":
            skipped["without both answers to one prompt"] += 1
            continue
        chosen, rejected = (a[1], b[1]) if winner == "model_a" else (b[1], a[1])
        if not chosen.strip() or not rejected.strip() or chosen.strip() == rejected.strip():
            skipped["with an empty or identical answer"] += 1
            continue
        pairs.append(Preference(prompt=a[0], chosen=chosen, rejected=rejected))
    return ArenaPairs(pairs, len(records), dict(skipped))


def arena_pairs(settings) -> ArenaPairs:
    """Pairs from the arena's votes in settings.arena_db, through the arena's export."""
    from eval.arena import ArenaStore

    return pairs_from_battles(ArenaStore(settings.arena_db).export_records())


def write_pairs(pairs: list[Preference], path: Path) -> Path:
    """Pairs as TRL preference JSONL (the run's data file: the card names it and its hash)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps(pair.to_trl(), ensure_ascii=False) + "\n")
    return path


def _trainer_module(method: str):
    if method == "dpo":
        from finetune import dpo as module
    else:
        from finetune import orpo as module
    return module


def _held_out_metrics(metrics: dict) -> dict:
    """The reward statistics TRL reports on the eval split, under short names."""
    names = {"rewards/accuracies": "reward_accuracy", "rewards/margins": "reward_margin",
             "rewards/chosen": "reward_chosen", "rewards/rejected": "reward_rejected", "loss": "loss",
             "logps/chosen": "logp_chosen", "logps/rejected": "logp_rejected", "log_odds_ratio": "log_odds_ratio"}
    out = {}
    for key, value in metrics.items():
        short = key[len("eval_"):] if key.startswith("eval_") else key
        if short in names and isinstance(value, (int, float)):
            out[names[short]] = round(float(value), 4)
    return out


def train_preference(config: FinetuneConfig, args, callbacks: list | tuple = (),
                     cancel: threading.Event | None = None, on_log=None) -> Path:
    """Train a LoRA adapter on preference pairs with TRL's DPOTrainer or ORPOTrainer; returns its folder.

    Raises DatasetError (before loading any model) when there are no usable pairs."""
    method = config.resolved_method()
    adapter = config.adapter_method()
    settings = config.settings()
    target = adapter_path(config)
    if target.exists() and not config.overwrite and not args.resume_from_checkpoint:
        raise FileExistsError(f"adapter '{config.name}' already exists at {target}; pick another --name or --overwrite")
    output_dir = Path(args.output_dir)
    main = args.process_index == 0
    source = None
    if config.from_arena:
        found = arena_pairs(settings)
        say(f"--from_arena: {found}")
        if not found.pairs:
            raise DatasetError(f"no preference pairs in the arena's {found.battles} votes ({settings.arena_db}): "
                               "vote 'A is better' or 'B is better' in the Arena tab first")
        source = {"arena_db": str(settings.arena_db), "battles": found.battles, "skipped": found.skipped}
        config.data = str(write_pairs(found.pairs, output_dir / "arena-pairs.jsonl"))
    pairs = read_preferences(config.data, config.variables())
    train_pairs, test_pairs = split(pairs, config.test_size, args.seed)
    if resolve_epochs(args, len(train_pairs)):
        say(f"epochs by dataset size: {args.num_train_epochs:g} for {len(train_pairs)} pairs")
    check_run_length(len(train_pairs), args, unit="pairs")
    handler = log_to(Path(args.logging_dir or output_dir)) if main else None
    try:
        with args.main_process_first(local=True, desc="load the base"):
            model, tokenizer = load_model(config, args, adapter)
        folder = base_folder(settings)
        if main:
            say(f"{len(train_pairs)} preference pairs (train), {len(test_pairs)} held out; method {method} "
                f"({adapter} adapter) on {folder}; logs in {args.logging_dir or output_dir}")
        # The held-out pairs go to the trainer even with eval_strategy no: the card's reward accuracy and
        # margins come from one evaluate() after training, and TRL tokenizes datasets only at construction.
        has_eval = bool(test_pairs)
        with BUILDING:  # peft adds its layers under the same process-wide state as a model load
            trainer = _trainer_module(method).make_trainer(
                model=model, args=args, train_dataset=to_preference_dataset(train_pairs),
                eval_dataset=to_preference_dataset(test_pairs) if has_eval else None, tokenizer=tokenizer,
                peft_config=peft_config_for(config, adapter, folder),
                callbacks=[RunLog(Path(args.logging_dir or output_dir), cancel, on_log), *callbacks])
        result, seconds = run_trainer(trainer, args, cancel, config.name)
        held_out = _held_out_metrics(trainer.evaluate()) if has_eval else {}
        peak, peak_kind = peak_memory_mb(str(args.device))
        partial = target.with_name(f".{target.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)  # what a killed run left there
        trainer.save_model(str(partial))
        (partial / TRAINER_ARGS_FILE).unlink(missing_ok=True)  # a pickle; the card holds the settings
        if not main:
            return target
        peft_model = trainer.accelerator.unwrap_model(trainer.model)
        if test_pairs and config.eval_generate_samples > 0:
            # ROUGE-L of greedy answers against the chosen answers, adapter and base: did it move towards them?
            sample = [Example(p.prompt, p.chosen) for p in test_pairs[: config.eval_generate_samples]]
            adapter_rouge = score_examples(peft_model, tokenizer, sample, config.eval_max_new_tokens)
            with peft_model.disable_adapter():
                base_rouge = score_examples(peft_model, tokenizer, sample, config.eval_max_new_tokens)
            held_out.update(rougeL_vs_chosen=round(adapter_rouge, 4), base_rougeL_vs_chosen=round(base_rouge, 4),
                            generated=len(sample))
        card = {
            "name": config.name,
            "base": {"model": settings.base_model, "folder": folder},
            "method": method,
            "adapter": adapter,
            "hyperparameters": {
                "lora_r": config.lora_r, "lora_alpha": config.lora_alpha, "use_rslora": config.use_rslora,
                "lora_dropout": config.lora_dropout,
                "target_modules": config.target_modules,
                "quantization": "nf4 double-quant, bf16 compute" if adapter == "qlora" else None,
                "beta": args.beta, **({"loss_type": list(args.loss_type)} if method == "dpo" else {}),
                "learning_rate": args.learning_rate, "num_train_epochs": args.num_train_epochs,
                "max_steps": args.max_steps, "per_device_train_batch_size": args.per_device_train_batch_size,
                "gradient_accumulation_steps": args.gradient_accumulation_steps, "world_size": args.world_size,
                "max_length": args.max_length, "seed": args.seed,
                "optim": str(args.optim.value if hasattr(args.optim, "value") else args.optim),
                "reference_model": "the base with the adapter disabled" if method == "dpo" else None,
            },
            "data": {"file": str(Path(config.data).resolve()), "sha256": file_sha256(config.data),
                     "format": "preference", "template_vars": config.variables(), "train_pairs": len(train_pairs),
                     "test_pairs": len(test_pairs), "test_size": config.test_size,
                     **({"from_arena": source} if source else {})},
            "training": {"seconds": round(seconds, 1), "optimizer_steps": trainer.state.global_step,
                         "peak_memory_mb": round(peak, 1), "peak_memory_kind": peak_kind, "device": str(args.device),
                         "best_checkpoint": trainer.state.best_model_checkpoint, "run_dir": str(output_dir),
                         "train_runtime": result.metrics.get("train_runtime"),
                         "train_loss": result.metrics.get("train_loss")},
            "held_out": held_out,  # reward accuracy and margin on the held-out pairs, after training
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_card(partial, card)
        if target.exists():
            shutil.rmtree(target)
        partial.rename(target)  # appears to ModelRegistry.variants() whole or not at all
        say(f"{trainer.state.global_step} optimizer steps in {seconds:.0f} s; held out: {json.dumps(held_out)}")
        return target
    finally:
        if handler is not None:
            import logging

            import transformers

            logging.getLogger("finetune").removeHandler(handler)
            transformers.utils.logging.remove_handler(handler)
            handler.close()
