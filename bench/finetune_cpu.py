"""CPU LoRA throughput on the real embedded SmolLM2-135M: a plain peft + transformers Trainer run with
padded batches against `python -m finetune`'s path (finetune.train.train), in the same process, on the
same data (the identity records with their placeholders filled), the same LoRA (r=16, all linear layers),
batch and learning rate.

  plain  get_peft_model + Trainer, fp32, each batch padded to its longest example (DataCollatorForSeq2Seq),
         loss on the answer tokens, peft's default LoRA dropout (0).
  ours   finetune.train.train with its CPU defaults: TRL SFTTrainer, completion-only loss, padding-free batches
         (one row per batch, per-example positions), LoRA dropout 0, bf16 autocast when the CPU has AVX512-BF16
         or AMX (finetune.config.cpu_has_bf16) with the frozen base stored in bf16, fp32 otherwise.

Real tokens = non-padding tokens (Trainer's include_num_input_tokens_seen="non_padding"), counted over the
steps after warm-up; the two arms alternate for --rounds rounds so a change in machine load hits both.
Writes bench/results/finetune-cpu-lora.json and .md.

    python bench/finetune_cpu.py [--steps 5] [--warmup 1] [--rounds 1]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = ROOT.parent / "shared" / "corpus" / "finetune" / "identity.json"
VARIABLES = "name=Orion,author=Nimbus Labs"
RESULTS = ROOT / "bench" / "results"

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import (  # noqa: E402
    DataCollatorForSeq2Seq,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from bench.machine import matrix_units  # noqa: E402
from chatapp.datasets import read_records  # noqa: E402
from chatapp.loading import load_base  # noqa: E402
from chatapp.settings import Settings  # noqa: E402
from finetune.config import FinetuneConfig, cpu_has_bf16, training_arguments  # noqa: E402
from finetune.train import train  # noqa: E402


class Meter(TrainerCallback):
    """Per-step wall time and the running count of real tokens."""

    def __init__(self):
        self.times, self.tokens = [], []

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)
        self.tokens.append(int(state.num_input_tokens_seen))


def rate(meter: Meter, warmup: int) -> dict:
    tokens = [b - a for a, b in zip([0] + meter.tokens[:-1], meter.tokens)][warmup:]
    seconds = sum(meter.times[warmup:])
    return {"steps": len(meter.times), "real_tokens": sum(tokens), "seconds": round(seconds, 2),
            "real_tokens_per_second": round(sum(tokens) / seconds, 1) if seconds else None}


def plain_arm(settings, opts, out: Path) -> dict:
    model, tokenizer, _ = load_base(settings, precision="32bit", device="cpu")
    variables = dict(p.split("=", 1) for p in VARIABLES.split(","))
    examples = read_records(DATA, variables)

    def tokenize(example):
        prompt = tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
        full = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=True,
                                             return_dict=True)["input_ids"][:512]
        return {"input_ids": full, "attention_mask": [1] * len(full),
                "labels": [-100] * min(len(prompt), len(full)) + full[len(prompt):]}

    data = Dataset.from_list([e.to_prompt_completion() for e in examples]).map(
        tokenize, remove_columns=["prompt", "completion"])
    lora = LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, target_modules="all-linear")
    meter = Meter()
    trainer = Trainer(model=get_peft_model(model, lora), args=TrainingArguments(
        output_dir=str(out), max_steps=opts.steps, per_device_train_batch_size=opts.batch, learning_rate=1e-3,
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", seed=42, use_cpu=True,
        include_num_input_tokens_seen="non_padding", dataloader_pin_memory=False, disable_tqdm=True),
        train_dataset=data, data_collator=DataCollatorForSeq2Seq(tokenizer, padding="longest"), callbacks=[meter])
    trainer.train()
    return {"arm": "plain", "precision": "fp32", "batching": "padded", **rate(meter, opts.warmup)}


def ours_arm(settings, opts, out: Path, name: str) -> dict:
    config = FinetuneConfig(data=str(DATA), name=name, template_vars=VARIABLES, data_dir=str(settings.data_dir),
                            test_size=0, forgetting_samples=0, eval_generate_samples=0)
    args = training_arguments(config, output_dir=str(out), max_steps=opts.steps,
                              per_device_train_batch_size=opts.batch, logging_steps=1, save_strategy="no",
                              include_num_input_tokens_seen="non_padding", dataloader_pin_memory=False,
                              disable_tqdm=True)
    meter = Meter()
    train(config, args, callbacks=[meter])
    batching = "padding-free" if args.padding_free else "packed" if args.packing else "padded"
    return {"arm": "ours", "precision": "bf16 autocast" if args.bf16 else "fp32", "batching": batching,
            **rate(meter, opts.warmup)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per arm (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="steps left out of the rate (default 1)")
    parser.add_argument("--batch", type=int, default=8, help="examples per step (default 8)")
    parser.add_argument("--rounds", type=int, default=1, help="plain/ours alternations (default 1)")
    opts = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings.from_env(data_dir=Path(folder) / "data")
        for round_ in range(opts.rounds):
            runs.append(plain_arm(settings, opts, Path(folder) / f"plain-{round_}"))
            print(json.dumps(runs[-1]), flush=True)
            runs.append(ours_arm(settings, opts, Path(folder) / f"ours-{round_}", f"bench-{round_}"))
            print(json.dumps(runs[-1]), flush=True)
    plain = [r["real_tokens_per_second"] for r in runs if r["arm"] == "plain"]
    ours = [r["real_tokens_per_second"] for r in runs if r["arm"] == "ours"]
    ratios = [o / p for o, p in zip(ours, plain)]
    result = {"settings": vars(opts), "cpu_matrix_units": matrix_units(), "cpu_has_bf16": cpu_has_bf16(),
              "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              "load_average": os.getloadavg(), "runs": runs, "ratios": [round(r, 2) for r in ratios],
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "finetune-cpu-lora.json").write_text(json.dumps(result, indent=2))
    lines = ["# CPU LoRA throughput: plain peft + Trainer (padded, fp32) against python -m finetune", "",
             f"SmolLM2-135M-Instruct, identity records, LoRA r=16 all-linear, batch {opts.batch}, {opts.steps} steps "
             f"per arm ({opts.warmup} warm-up left out). CPU matrix units: {', '.join(matrix_units()) or 'none'}; "
             f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; "
             f"load average at the end {', '.join(f'{x:.1f}' for x in os.getloadavg())}.", "",
             "| round | arm | precision | batching | real tokens | seconds | real tokens/s |", "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(runs):
        lines.append(f"| {i // 2 + 1} | {r['arm']} | {r['precision']} | {r['batching']} | {r['real_tokens']} | {r['seconds']} | "
                     f"{r['real_tokens_per_second']} |")
    lines += ["", f"ours / plain real tokens/s per round: {', '.join(f'{x:.2f}x' for x in ratios)}"]
    (RESULTS / "finetune-cpu-lora.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
