"""Training: a dataset and a method in, a PEFT adapter with its card under DATA/adapters/NAME out.

TRL's SFTTrainer does the work (tokenising with the chat template, completion-only loss, padding or
padding-free packing, checkpoints, best-model selection, resuming, DDP/FSDP); this module picks the
base model and PEFT method, adds ROUGE-L of generated answers to each evaluation, and writes the card.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import resource
import shutil
import threading
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import torch
import transformers
from matplotlib.figure import Figure
from peft import (
    LoraConfig,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
    load_peft_weights,
    prepare_model_for_kbit_training,
    set_peft_model_state_dict,
)
from peft.helpers import disable_input_dtype_casting
from peft.optimizers import create_loraplus_optimizer
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    TrainerCallback,
    TrainerState,
)
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import TrainOutput, get_last_checkpoint
from trl import SFTTrainer

from chatapp.datasets import file_sha256
from chatapp.loading import BUILDING, base_folder, load_base, quantization_config
from chatapp.adapters import TRAINER_ARGS_FILE, read_card, write_card
from eval.metrics import score_pairs
from finetune.attention import PACKED_ATTENTION
from finetune.config import (
    FinetuneConfig,
    TrainConfig,
    resolve_epochs,
    training_arguments,
)
from finetune.data import (
    DatasetError,
    Example,
    read_records,
    split,
    summarize,
    to_dataset,
)

log = logging.getLogger("finetune")


class Cancelled(RuntimeError):
    """The run was stopped on request; nothing was saved as an adapter."""


# Fewer optimizer steps than this have not moved a LoRA adapter on the 135M base in any run measured here
# (a 3-step run on 16 records changed no answer); the warning says so before any model loads.
MIN_OPTIMIZER_STEPS = 20
# Labelled positions scored at a time by the CPU head (FinetuneTrainer.compute_loss): 128 x a 49,152-token
# vocabulary in fp32 is 25 MB, under glibc's 32 MB mmap ceiling.
HEAD_SLICE = 128


def optimizer_steps(n_train: int, args) -> int:
    """Optimizer steps the Trainer will take: max_steps, else ceil(examples / (batch x accumulation x
    processes)) per epoch times the epochs (rows, not examples, with packing: an upper bound then)."""
    if args.max_steps and args.max_steps > 0:
        return int(args.max_steps)
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
    return int(math.ceil(math.ceil(n_train / per_step) * args.num_train_epochs))


def check_run_length(n_train: int, args, unit: str = "examples") -> int:
    """Warn before a run too short to learn anything, with what to change; returns the planned steps."""
    steps = optimizer_steps(n_train, args)
    if steps < MIN_OPTIMIZER_STEPS:
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
        epochs = math.ceil(MIN_OPTIMIZER_STEPS / max(1, math.ceil(n_train / per_step)))
        hint = (f"--max_steps {MIN_OPTIMIZER_STEPS}" if args.max_steps and args.max_steps > 0
                else f"--num_train_epochs {epochs}")
        say(f"warning: this run takes only {steps} optimizer steps ({n_train} {unit}, {per_step} per step, "
            f"{args.num_train_epochs:g} epochs{f', max_steps {args.max_steps}' if args.max_steps > 0 else ''}); "
            f"fewer than {MIN_OPTIMIZER_STEPS} rarely teaches the model anything. Try {hint}, a smaller "
            f"--per_device_train_batch_size, or more data.")
    return steps


# ---------------------------------------------------------------------------------------------
# Scoring generated answers


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F1 (0-1) with the eval package's scorer and its unicode tokenizer (`python -m eval score
    --tokenizer unicode`): the default one keeps only [a-z0-9], so Chinese or Hindi answers would all score 0;
    on ASCII text the two tokenize alike."""
    if not predictions:
        return float("nan")
    values = score_pairs(predictions, references, tokenizer="unicode").rouge["rougeL"]["fmeasure"]
    return float(sum(values) / len(predictions))


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 64,
                     batch_size: int = 8) -> list[str]:
    """Greedy answers to chat prompts, batched with left padding (decoder-only models continue on the right)."""
    was_training = model.training
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    answers: list[str] = []
    try:
        device = next(p for p in model.parameters()).device
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer.apply_chat_template(prompts[start:start + batch_size], add_generation_prompt=True,
                                                  padding=True, return_tensors="pt", return_dict=True)
            batch = {k: v.to(device) for k, v in batch.items()}
            output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                    top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
            new_tokens = output[:, batch["input_ids"].shape[1]:]
            answers += [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers


def score_examples(model, tokenizer, examples: list[Example], max_new_tokens: int) -> float:
    answers = generate_answers(model, tokenizer, [e.prompt for e in examples], max_new_tokens)
    return rouge_l(answers, [e.response for e in examples])


# ---------------------------------------------------------------------------------------------
# Trainer, callbacks, logs


class FinetuneTrainer(SFTTrainer):
    """SFTTrainer whose evaluations also report ROUGE-L of greedy answers on a fixed held-out sample, so
    `metric_for_best_model eval_rougeL` can pick the checkpoint, and which on CPU can score only the labelled
    positions (`labelled_logits_only`, see compute_loss)."""

    def __init__(self, *args, generation_examples: list[Example] = (), max_new_tokens: int = 64,
                 labelled_logits_only: bool = False, loraplus_lr_ratio: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.loraplus_lr_ratio = loraplus_lr_ratio
        self.generation_examples = list(generation_examples)
        self.max_new_tokens = max_new_tokens
        self.labelled_logits_only = labelled_logits_only
        self.labelled_metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.labelled_tokens_seen = 0

    def create_optimizer(self, model=None):
        """With `loraplus_lr_ratio`, LoRA+ (peft's create_loraplus_optimizer): the B matrices take steps that many
        times larger than A's, with the optimizer and its settings that the TrainingArguments choose."""
        if self.optimizer is None and self.loraplus_lr_ratio:
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
            kwargs.pop("lr", None)
            self.optimizer = create_loraplus_optimizer(
                self.model, optimizer_cls, lr=self.args.learning_rate, loraplus_lr_ratio=self.loraplus_lr_ratio,
                loraplus_weight_decay=self.args.weight_decay, **kwargs)
        return super().create_optimizer(model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """With `labelled_logits_only`, project only the positions that have a label. TRL's fused head scores
        every position off Triton devices (to keep tile shapes fixed there), which is half a CPU step when
        most tokens are prompt; transformers' `logits_to_keep` takes the labelled positions instead (171 ->
        212-246 real tokens/s on 2 AVX512-BF16 cores, in alternating runs). The loss, the entropy, the token
        accuracy and the token count are TRL's, on the same positions (tests/test_finetune.py)."""
        plain_nll = self.args.loss_type == "nll" and self.label_smoother is None and self.compute_loss_func is None
        if not (self.labelled_logits_only and plain_nll and not return_outputs):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        targets = inputs["labels"][:, 1:]
        keep = (targets != -100).any(dim=0).nonzero().flatten()
        features = {k: v for k, v in inputs.items() if k != "labels"}
        # With bf16 on, the CPU base is stored in bf16 and runs under autocast (accelerate wraps the prepared
        # model's forward in it; entered here too, so an unprepared model runs the same). peft would cast each
        # LoRA input up to its fp32 weight and autocast back down for the matmul: ~1,100 copies of
        # (tokens x 576) a step, forward and backward, for the same values (-4% of a step).
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.args.bf16), \
                disable_input_dtype_casting(model, active=self.args.bf16):
            outputs = model(**features, use_cache=False, logits_to_keep=keep)
        targets = targets[:, keep]
        mask = targets != -100
        # fp32 log-probabilities a slice of positions at a time: each slice (25 MB) stays under glibc's mmap
        # ceiling (chatapp.loading.keep_freed_memory), so it reuses heap pages; one (labelled x vocab) fp32
        # tensor is ~100 MB, a fresh mmap whose page faults took more time than the softmax itself.
        nll, entropy, correct = [], [], []
        for logits, wanted, labelled in zip(outputs.logits.split(HEAD_SLICE, 1), targets.split(HEAD_SLICE, 1),
                                            mask.split(HEAD_SLICE, 1)):
            log_probs = logits.float().log_softmax(-1)
            nll.append((log_probs.gather(-1, wanted.clamp(min=0).unsqueeze(-1)).squeeze(-1) * labelled).sum())
            with torch.no_grad():
                entropy.append(-(log_probs.exp() * log_probs).sum(-1)[labelled].sum())
                correct.append((log_probs.argmax(-1) == wanted)[labelled].sum())
        count = mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = -torch.stack(nll).sum() / torch.as_tensor(count).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as Trainer: DDP averages the gradients
        with torch.no_grad():
            gather = self.accelerator.gather_for_metrics
            valid = gather(mask.sum()).sum()
            entropy = gather(torch.stack(entropy).sum()).sum()
            correct = gather(torch.stack(correct).sum()).sum()
            metrics = self.labelled_metrics[mode]
            metrics["entropy"].append((entropy / valid).item() if valid > 0 else 0.0)
            metrics["mean_token_accuracy"].append((correct / valid).item() if valid > 0 else 0.0)
            if mode == "train":  # TRL's count: real tokens, a padding-free row holding only real ones
                seen = inputs["attention_mask"].sum() if "attention_mask" in inputs else \
                    torch.tensor(inputs["position_ids"].size(1))
                self.labelled_tokens_seen += int(gather(seen.to(loss.device)).sum())
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {k: sum(v) / len(v) for k, v in self.labelled_metrics[mode].items() if v}
        if metrics:
            metrics["num_tokens"] = self.labelled_tokens_seen
            prefix = "eval_" if mode == "eval" else ""
            logs.update({prefix + k: v for k, v in metrics.items()})
            self.labelled_metrics[mode].clear()
        super().log(logs, start_time)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                         metric_key_prefix)
        # Every rank generates the same sample so all agree on the metric; FSDP shards would need gathering.
        if self.generation_examples and not self.is_fsdp_enabled:
            model = self.accelerator.unwrap_model(self.model)
            output.metrics[f"{metric_key_prefix}_rougeL"] = score_examples(
                model, self.processing_class, self.generation_examples, self.max_new_tokens)
        return output


class RunLog(TrainerCallback):
    """Writes each log entry to OUTPUT/log.jsonl and a line to train.log as it happens; stops on cancel."""

    def __init__(self, folder: Path, cancel: threading.Event | None = None, on_log=None):
        self.folder = Path(folder)
        self.cancel = cancel
        self.on_log_hook = on_log

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        entry = {"step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch, **logs}
        with open(self.folder / "log.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
        shown = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in logs.items())
        log.info("step %d/%d %s", state.global_step, state.max_steps, shown)
        if self.on_log_hook:
            self.on_log_hook(entry)

    def on_step_end(self, args, state, control, **kwargs):
        if self.on_log_hook and state.is_world_process_zero:
            self.on_log_hook({"step": state.global_step, "max_steps": state.max_steps})
        if self.cancel is not None and self.cancel.is_set():
            control.should_training_stop = True


def say(message: str) -> None:
    """To the console and train.log: the lines a user should see even with the progress bar running."""
    print(message, flush=True)
    log.info(message)


def log_to(folder: Path) -> logging.Handler:
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # the Trainer's progress callback already prints each log entry to the console
    transformers.utils.logging.add_handler(handler)
    return handler


# ---------------------------------------------------------------------------------------------
# Model and method


def load_model(config: FinetuneConfig, args: TrainConfig, method: str):
    settings = config.settings()
    device = "cuda:%d" % max(args.local_process_index, 0) if torch.cuda.is_available() and not args.use_cpu else "cpu"
    if method == "qlora":
        if args.is_fsdp_enabled if hasattr(args, "is_fsdp_enabled") else bool(args.fsdp):
            return _load_qlora_for_fsdp(settings)
        model, tokenizer, _ = load_base(settings, precision="4bit", device=device)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(args.activation_checkpointing))
        return model, tokenizer
    # bf16 autocast on CPU re-casts every frozen fp32 weight at each forward; a base stored in bf16 skips
    # that (peft keeps the LoRA weights in fp32): 172 -> 189 real tokens/s on 2 AVX512-BF16 cores.
    precision = "16bit" if device == "cpu" and args.bf16 and method == "lora" else "32bit"
    model, tokenizer, _ = load_base(settings, precision=precision, device=device,
                                    attention=PACKED_ATTENTION if device == "cpu" else None)
    return model, tokenizer


def _load_qlora_for_fsdp(settings):
    """FSDP shards parameters of one dtype and places them itself, so the 4-bit weights are stored as bf16
    and loaded without a device map; chatapp.model.load_base always places the model, hence this loader."""
    base = quantization_config("4bit").to_dict()
    base.update(bnb_4bit_quant_storage="bfloat16")
    name = base_folder(settings)
    with BUILDING:
        model = AutoModelForCausalLM.from_pretrained(name, quantization_config=BitsAndBytesConfig.from_dict(base),
                                                     dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(name)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return model, tokenizer


def peft_config_for(config: FinetuneConfig, method: str, tokenizer_path: str):
    if method == "prompt-tuning":
        text = config.prompt_tuning_init_text
        return PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=config.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=text or None, tokenizer_name_or_path=tokenizer_path if text else None)
    targets = config.target_modules
    targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    return LoraConfig(task_type=TaskType.CAUSAL_LM, r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout, target_modules=targets, use_rslora=config.use_rslora)


# ---------------------------------------------------------------------------------------------
# The run


def peak_memory_mb(device: str) -> tuple[float, str]:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20, "cuda max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"


def forgetting_check(model, tokenizer, config: FinetuneConfig, trained: list[Example]) -> dict:
    """ROUGE-L of base and adapter on general instructions that were not trained on."""
    if not config.forgetting_data or config.forgetting_samples <= 0:
        return {"skipped": "no --forgetting_data"}
    try:
        records = read_records(config.forgetting_data)
    except DatasetError as error:
        return {"skipped": str(error)}
    seen = {json.dumps(e.prompt) for e in trained}
    # The file's last records, so a run that trains on the head of the same file is still checked fairly.
    held_out = [e for e in reversed(records) if json.dumps(e.prompt) not in seen][: config.forgetting_samples]
    if not held_out:
        return {"skipped": "every general instruction was in the training data"}
    start = time.perf_counter()
    adapter = score_examples(model, tokenizer, held_out, config.eval_max_new_tokens)
    with model.disable_adapter():
        base = score_examples(model, tokenizer, held_out, config.eval_max_new_tokens)
    return {"data": str(config.forgetting_data), "records": len(held_out), "max_new_tokens": config.eval_max_new_tokens,
            "base_rougeL": round(base, 4), "adapter_rougeL": round(adapter, 4),
            "change": round(adapter - base, 4), "seconds": round(time.perf_counter() - start, 1)}


def _final_metrics(state) -> dict:
    evals = [e for e in state.log_history if any(k.startswith("eval_") for k in e)]
    chosen = None
    if state.best_model_checkpoint and state.best_global_step:
        chosen = next((e for e in evals if e.get("step") == state.best_global_step), None)
    chosen = chosen or (evals[-1] if evals else {})
    train = next((e for e in reversed(state.log_history) if "train_loss" in e), {})
    metrics = {k: v for k, v in chosen.items() if k.startswith("eval_") and not k.endswith(("runtime", "per_second"))}
    if "train_loss" in train:
        metrics["train_loss"] = train["train_loss"]
    losses = [e["loss"] for e in state.log_history if "loss" in e]
    if losses:
        metrics["first_logged_loss"], metrics["last_logged_loss"] = losses[0], losses[-1]
    return metrics


def finished_checkpoint(args, resume) -> Path | None:
    """The checkpoint being resumed from, if it already holds every step the run asks for."""
    if not resume:
        return None
    folder = get_last_checkpoint(args.output_dir) if resume is True else resume
    if not folder or not (Path(folder) / TRAINER_STATE_NAME).is_file():
        return None
    state = TrainerState.load_from_json(str(Path(folder) / TRAINER_STATE_NAME))
    wanted = args.max_steps if args.max_steps and args.max_steps > 0 else state.max_steps
    return Path(folder) if state.global_step >= wanted else None


def use_padding_free(args: TrainConfig, summary, method: str) -> None:
    """Choose padding-free batches where they are exact (no compute spent on padding; on 2 AVX2 cores from 1.00x
    to 1.19x the speed of padded batches of 8, bench/results/finetune-cpu-lora.md and 6-step CLI runs, as the
    rows' quadratic attention eats the saving). TRL refuses padding_free with a max_length it would not enforce,
    so max_length is dropped when no example reaches it (summary.truncated == 0: there is nothing to cut)."""
    args.padding_free = not args.packing and method != "prompt-tuning" and summary.truncated == 0
    if args.padding_free:
        args.max_length = None


def run_trainer(trainer, args, cancel: threading.Event | None, name: str):
    """trainer.train() with `--resume_from_checkpoint true|last|latest` meaning the newest checkpoint;
    (result, seconds). A cancelled run raises Cancelled, and saves nothing."""
    resume = args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last", "latest"):
        resume = True
    started = time.perf_counter()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    done = finished_checkpoint(args, resume)
    if done is not None:
        # The run was killed after its last step (while saving the adapter). Trainer.train() resumed there
        # runs one step past max_steps (transformers 5.24), so the finished weights are loaded instead.
        set_peft_model_state_dict(trainer.model, load_peft_weights(str(done)))
        trainer.state = TrainerState.load_from_json(str(done / TRAINER_STATE_NAME))
        say(f"resumed from {done.name}: the run had finished training; saving its adapter")
        return TrainOutput(trainer.state.global_step, 0.0, {}), time.perf_counter() - started
    result = trainer.train(resume_from_checkpoint=resume or None)
    seconds = time.perf_counter() - started
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"run '{name}' cancelled at step {trainer.state.global_step}; no adapter saved")
    return result, seconds


def adapter_path(config: FinetuneConfig) -> Path:
    return Path(config.settings().adapters_dir) / config.name


def train(config: FinetuneConfig, args: TrainConfig | None = None, callbacks: list | tuple = (),
          cancel: threading.Event | None = None, on_log=None) -> Path:
    """Train an adapter and save it (with card.json) to DATA/adapters/NAME; return that folder.

    Raises DatasetError before loading any model when the data is bad, and Cancelled when `cancel` is set.
    dpo/orpo runs go to finetune.preference (imported here: that module builds on this one)."""
    args = args or training_arguments(config)
    if config.preference:
        from finetune.preference import train_preference

        return train_preference(config, args, callbacks, cancel, on_log)
    method = config.resolved_method()
    target = adapter_path(config)
    if target.exists() and not config.overwrite and not args.resume_from_checkpoint:
        raise FileExistsError(f"adapter '{config.name}' already exists at {target}; pick another --name or --overwrite")
    examples = read_records(config.data, config.variables())
    train_examples, test_examples = split(examples, config.test_size, args.seed)
    if config.train_fraction < 1:  # the first share of the seeded training order; the held-out set is unchanged
        train_examples = train_examples[: max(1, round(len(train_examples) * config.train_fraction))]
    if resolve_epochs(args, len(train_examples)):
        say(f"epochs by dataset size: {args.num_train_epochs:g} for {len(train_examples)} examples")
    planned = check_run_length(len(train_examples), args)
    main = args.process_index == 0
    output_dir = Path(args.output_dir)
    handler = log_to(Path(args.logging_dir or output_dir)) if main else None
    try:
        with args.main_process_first(local=True, desc="load the base"):  # converts the embedded GGUF once
            model, tokenizer = load_model(config, args, config.adapter_method())
        summary = summarize(train_examples, tokenizer, args.max_length)
        if args.padding_free is None:
            use_padding_free(args, summary, method)
        if main:
            say(f"{summary} (train); {len(test_examples)} held out for evaluation; "
                f"method {method} on {base_folder(config.settings())}; {planned} optimizer steps planned; "
                f"logs in {args.logging_dir or output_dir}")
        folder = base_folder(config.settings())
        has_eval = bool(test_examples) and args.eval_strategy != "no"
        with BUILDING:  # peft adds its layers under the same process-wide state as a model load
            trainer = FinetuneTrainer(
                model=model, args=args, train_dataset=to_dataset(train_examples),
                eval_dataset=to_dataset(test_examples) if has_eval else None, processing_class=tokenizer,
                peft_config=peft_config_for(config, method, folder),
                callbacks=[RunLog(Path(args.logging_dir or output_dir), cancel, on_log), *callbacks],
                generation_examples=test_examples[: config.eval_generate_samples] if has_eval else (),
                max_new_tokens=config.eval_max_new_tokens,
                # prompt tuning prepends virtual tokens, so the kept positions would not line up with the labels
                labelled_logits_only=args.device.type == "cpu" and method != "prompt-tuning",
                loraplus_lr_ratio=config.loraplus_lr_ratio if method != "prompt-tuning" else 0.0)
        result, seconds = run_trainer(trainer, args, cancel, config.name)
        device = str(args.device)
        peak, peak_kind = peak_memory_mb(device)
        tokens = next((e["num_tokens"] for e in reversed(trainer.state.log_history) if "num_tokens" in e), None)
        partial = target.with_name(f".{target.name}.partial")  # the same on every rank: FSDP saves collectively
        shutil.rmtree(partial, ignore_errors=True)  # what a killed run left there
        trainer.save_model(str(partial))  # PEFT format; gathers shards under FSDP
        (partial / TRAINER_ARGS_FILE).unlink(missing_ok=True)  # a pickle; the card holds the settings
        if not main:
            return target
        peft_model = trainer.accelerator.unwrap_model(trainer.model)
        forgetting = forgetting_check(peft_model, tokenizer, config, train_examples) if not trainer.is_fsdp_enabled \
            else {"skipped": "not run under FSDP"}
        card = {
            "name": config.name,
            "base": {"model": config.settings().base_model, "folder": folder},
            "method": method,
            "hyperparameters": {
                **({"num_virtual_tokens": config.num_virtual_tokens, "prompt_tuning_init_text": config.prompt_tuning_init_text}
                   if method == "prompt-tuning" else
                   {"lora_r": config.lora_r, "lora_alpha": config.lora_alpha, "use_rslora": config.use_rslora,
                    "loraplus_lr_ratio": config.loraplus_lr_ratio,
                    "lora_dropout": config.lora_dropout,
                    "target_modules": config.target_modules}),
                "quantization": "nf4 double-quant, bf16 compute" if method == "qlora" else None,
                "learning_rate": args.learning_rate, "num_train_epochs": args.num_train_epochs,
                "max_steps": args.max_steps, "per_device_train_batch_size": args.per_device_train_batch_size,
                "gradient_accumulation_steps": args.gradient_accumulation_steps, "world_size": args.world_size,
                "max_length": args.max_length, "packing": args.packing, "padding_free": args.padding_free,
                "optim": str(args.optim.value
                if hasattr(args.optim, "value") else args.optim), "seed": args.seed,
                "completion_only_loss": True,
            },
            "data": {"file": str(Path(config.data).resolve()), "sha256": file_sha256(config.data),
                     "template_vars": config.variables(), "train_examples": len(train_examples),
                     "train_fraction": config.train_fraction,
                     "test_examples": len(test_examples), "test_size": config.test_size,
                     "summary": asdict(summary)},
            "training": {"seconds": round(seconds, 1), "steps": trainer.state.global_step,
                         "optimizer_steps": trainer.state.global_step,
                         "tokens": tokens, "tokens_per_second": round(tokens / seconds, 1) if tokens else None,
                         "peak_memory_mb": round(peak, 1), "peak_memory_kind": peak_kind, "device": device,
                         "best_checkpoint": trainer.state.best_model_checkpoint, "run_dir": str(output_dir),
                         "train_runtime": result.metrics.get("train_runtime")},
            "metrics": _final_metrics(trainer.state),
            "forgetting": forgetting,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_card(partial, card)
        if target.exists():
            shutil.rmtree(target)
        partial.rename(target)  # appears to ModelRegistry.variants() whole or not at all
        say(f"{trainer.state.global_step} optimizer steps in {seconds:.0f} s; final metrics: {json.dumps(card['metrics'])}")
        say(f"forgetting check: {json.dumps(forgetting)}")
        return target
    finally:
        if handler is not None:
            log.removeHandler(handler)
            transformers.utils.logging.remove_handler(handler)
            handler.close()


def plot_fractions(rows: list[dict], path: Path, title: str = "") -> Path:
    """PNG of held-out ROUGE-L against the number of training records (one point per --data_fractions run).
    matplotlib's Figure API draws without a GUI backend, so this works in the app's server threads too."""
    points = [(r["records"], r["eval_rougeL"]) for r in rows if r.get("eval_rougeL") is not None]
    figure = Figure(figsize=(5, 3.2), layout="constrained")
    axes = figure.subplots()
    if points:
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o")
        for x, y in points:
            axes.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    axes.set_xlabel("training records")
    axes.set_ylabel("held-out ROUGE-L")
    axes.set_title(title or "How much data is enough")
    axes.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def train_fractions(config: FinetuneConfig, args: TrainConfig | None = None, cancel: threading.Event | None = None,
                    on_log=None, on_row=None) -> list[dict]:
    """--data_fractions: one adapter per share of the training records (NAME-25pct, ...), the same held-out
    records for all; returns [{fraction, records, adapter, eval_rougeL, eval_loss}] in fraction order and writes
    them, with their plot, to RUNS/NAME-fractions.json and .png. `on_row(row)` follows each finished run."""
    args = args or training_arguments(dataclasses.replace(config, data_fractions=None))
    rows = []
    for fraction in config.fractions():
        name = f"{config.name}-{round(fraction * 100)}pct"
        run_config = dataclasses.replace(config, name=name, train_fraction=fraction, data_fractions=None)
        run_args = copy.deepcopy(args)
        run_args.output_dir = str(Path(args.output_dir).with_name(name))
        run_args.logging_dir = run_args.output_dir
        say(f"--data_fractions: training {name} on {fraction:g} of the records")
        path = train(run_config, run_args, cancel=cancel, on_log=on_log)
        card = read_card(path)
        rows.append({"fraction": fraction, "records": card["data"]["train_examples"], "adapter": name,
                     "eval_rougeL": card["metrics"].get("eval_rougeL"), "eval_loss": card["metrics"].get("eval_loss")})
        if on_row:
            on_row(rows[-1])
    if args.process_index == 0:
        summary = Path(args.output_dir).with_name(f"{config.name}-fractions.json")
        summary.write_text(json.dumps(rows, indent=2))
        plot = plot_fractions(rows, summary.with_suffix(".png"), f"{config.name}: held-out ROUGE-L by records")
        say(f"--data_fractions: held-out score against records in {summary} and {plot}")
    return rows
