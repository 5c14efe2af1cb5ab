"""Fine-tuning throughput: the plain Hugging Face path against ours, in the same run, on real instruction data.

Arms (each in its own process, so peak memory is its own):
  plain  transformers.Trainer + peft + bitsandbytes: examples padded to the longest in each batch, no packing,
         no gradient checkpointing, the model's own loss (full logits).
  ours   what `python -m finetune` runs: TRL SFTTrainer, completion-only loss, examples packed into rows of
         --max_length with per-example position ids (padding-free; transformers turns them into a varlen /
         block-diagonal mask, so no example attends to another) and TRL's fused LM head, which computes the
         loss in chunks without materialising the full [tokens x vocab] logits.
Both: nf4 QLoRA (double quant, bf16 compute) on CUDA, LoRA r=16 on all linear layers, the same learning rate
and data; a model of SmolLM2-135M's shape with random weights (throughput does not depend on weight values).

Reports real (non-pad) tokens/s over the steps after warm-up, peak memory, memory after loading, and the loss
curve of each arm, to bench/results/finetune-<device>.json and .md.

    python bench/finetune.py                         # CUDA: full settings
    python bench/finetune.py --tiny                  # CPU smoke check: 2 layers, short rows, few steps
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = ROOT.parent / "shared" / "corpus" / "finetune" / "alpaca_en_demo.json"
RESULTS = ROOT / "bench" / "results"


def options(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per arm (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the throughput (default 5)")
    parser.add_argument("--batch", type=int, default=8, help="examples (plain) or packed rows (ours) per step")
    parser.add_argument("--max_length", type=int, default=512, help="packed row length; truncation for both")
    parser.add_argument("--lora_r", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--layers", type=int, default=None, help="override the number of layers (smoke runs)")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke settings: 2 layers, rows of 128, 6 steps")
    parser.add_argument("--attn", default=None, help="attention for ours (default: flash_attention_2 if installed, "
                                                     "else sdpa with the block-diagonal mask)")
    parser.add_argument("--arm", choices=["plain", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--model_dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help="result file stem (default bench/results/finetune-<device>)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.steps, args.warmup, args.batch, args.max_length, args.layers = 6, 2, 4, 128, args.layers or 2
    return args


def random_model(folder: Path, layers: int | None) -> Path:
    """A SmolLM2-135M-shaped model with random weights, saved so bitsandbytes can quantise it on load."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from chatapp.loading import base_folder
    from chatapp.settings import Settings

    source = base_folder(Settings.from_env())
    config = AutoConfig.from_pretrained(source)
    if layers:
        config.num_hidden_layers = layers
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def load(folder: str, cuda: bool, attn: str | None):
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chatapp.loading import quantization_config

    kwargs = {"attn_implementation": attn} if attn else {}
    if cuda:
        model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quantization_config("4bit"),
                                                     device_map={"": 0}, **kwargs)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:  # CPU smoke check: full precision (4-bit CPU matmuls would only measure bitsandbytes' CPU fallback)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return model, tokenizer


def meter():
    """A Trainer callback recording per-step wall time, real tokens seen and the logged loss."""
    from transformers import TrainerCallback

    class Meter(TrainerCallback):
        def __init__(self):
            self.times, self.tokens, self.losses = [], [], []

        def on_step_begin(self, args, state, control, **kwargs):
            _sync()
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            _sync()
            self.times.append(time.perf_counter() - self._start)
            self.tokens.append(int(state.num_input_tokens_seen))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append([state.global_step, round(float(logs["loss"]), 4)])

    return Meter()


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_arm(args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from finetune.data import read_records

    cuda = torch.cuda.is_available()
    attn = args.attn
    if args.arm == "ours" and attn is None:
        import importlib.util

        attn = "flash_attention_2" if cuda and importlib.util.find_spec("flash_attn") else "sdpa"
    model, tokenizer = load(args.model_dir, cuda, attn if args.arm == "ours" else None)
    after_load = torch.cuda.memory_allocated() / 2**20 if cuda else None
    examples = read_records(DATA)
    lora = LoraConfig(task_type="CAUSAL_LM", r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                      target_modules="all-linear")
    common = dict(output_dir=tempfile.mkdtemp(), max_steps=args.steps, learning_rate=args.learning_rate,
                  logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", seed=0,
                  bf16=cuda, use_cpu=not cuda, optim="paged_adamw_8bit" if cuda else "adamw_torch",
                  include_num_input_tokens_seen="non_padding", dataloader_pin_memory=cuda, disable_tqdm=True,
                  lr_scheduler_type="constant", warmup_steps=0)
    meter_ = meter()
    if args.arm == "plain":
        from peft import get_peft_model

        def tokenize(example):
            prompt = tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"]
            full = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=True,
                                                 return_dict=True)["input_ids"][: args.max_length]
            return {"input_ids": full, "attention_mask": [1] * len(full),
                    "labels": [-100] * min(len(prompt), len(full)) + full[len(prompt):]}

        data = Dataset.from_list([e.to_prompt_completion() for e in examples]).map(
            tokenize, remove_columns=["prompt", "completion"])
        trainer = Trainer(model=get_peft_model(model, lora), args=TrainingArguments(
            per_device_train_batch_size=args.batch, gradient_checkpointing=False, **common),
            train_dataset=data, data_collator=DataCollatorForSeq2Seq(tokenizer, padding="longest"),
            callbacks=[meter_])
    else:
        from trl import SFTConfig, SFTTrainer

        from finetune.data import to_dataset

        trainer = SFTTrainer(model=model, args=SFTConfig(
            per_device_train_batch_size=args.batch, packing=True, packing_strategy="bfd", max_length=args.max_length,
            gradient_checkpointing=False, completion_only_loss=True, **common),
            train_dataset=to_dataset(examples), processing_class=tokenizer, peft_config=lora, callbacks=[meter_])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    steps = slice(args.warmup, None)
    tokens = [b - a for a, b in zip([0] + meter_.tokens[:-1], meter_.tokens)]
    seconds = sum(meter_.times[steps])
    return {
        "arm": args.arm, "attention": attn or "sdpa (default)", "steps": len(meter_.times),
        "real_tokens_per_second": round(sum(tokens[steps]) / seconds, 1) if seconds else None,
        "real_tokens_per_step": round(sum(tokens[steps]) / max(1, len(tokens[steps])), 1),
        "peak_memory_mb": round((torch.cuda.max_memory_allocated() if cuda else
                                 resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20, 1),
        "memory_kind": "cuda max_memory_allocated" if cuda else "process peak RSS",
        "memory_after_load_mb": round(after_load, 1) if after_load is not None else None,
        "loss_curve": meter_.losses,
    }


def markdown(result: dict) -> str:
    plain, ours = result["arms"]["plain"], result["arms"]["ours"]
    speed = ours["real_tokens_per_second"] / plain["real_tokens_per_second"]
    memory = ours["peak_memory_mb"] / plain["peak_memory_mb"]
    lines = [f"# Fine-tuning throughput ({result['device']})", "",
             f"Settings: {json.dumps(result['settings'])}", "",
             "| arm | real tokens/s | real tokens/step | peak memory (MB) | attention |", "|---|---|---|---|---|"]
    for arm in (plain, ours):
        lines.append(f"| {arm['arm']} | {arm['real_tokens_per_second']} | {arm['real_tokens_per_step']} | "
                     f"{arm['peak_memory_mb']} ({arm['memory_kind']}) | {arm['attention']} |")
    lines += ["", f"ours / plain: {speed:.2f}x tokens/s, {memory:.2f}x peak memory", "",
              "Loss curves (step, loss):", "", f"- plain: {plain['loss_curve']}", f"- ours: {ours['loss_curve']}"]
    if result.get("note"):
        lines += ["", result["note"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = options(argv)
    if args.arm:
        print(json.dumps(run_arm(args)))
        return 0
    import torch

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    with tempfile.TemporaryDirectory() as folder:
        random_model(Path(folder), args.layers)
        arms = {}
        for arm in ("plain", "ours"):
            command = [sys.executable, __file__, "--arm", arm, "--model_dir", folder, "--steps", str(args.steps),
                       "--warmup", str(args.warmup), "--batch", str(args.batch), "--max_length", str(args.max_length),
                       "--lora_r", str(args.lora_r), "--learning_rate", str(args.learning_rate)]
            command += ["--attn", args.attn] if args.attn else []
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-4000:], file=sys.stderr)
                print(f"error: arm {arm} failed", file=sys.stderr)
                return 1
            arms[arm] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{arm}: {arms[arm]['real_tokens_per_second']} real tokens/s, {arms[arm]['peak_memory_mb']} MB",
                  flush=True)
    result = {"device": device, "settings": {k: v for k, v in vars(args).items() if k not in ("arm", "model_dir", "out")},
              "arms": arms, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if not cuda:
        result["note"] = ("CPU smoke check only (full-precision LoRA, tiny model): it shows both arms run and "
                          "their loss curves; it says nothing about GPU throughput or memory.")
    stem = Path(args.out) if args.out else RESULTS / f"finetune-{'cuda' if cuda else 'cpu-smoke'}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
