"""What a fine-tuning run is: our options (`FinetuneConfig`) plus TRL's config for the method's trainer
(`SFTConfig`, `DPOConfig` or `ORPOConfig`, each extending Hugging Face `TrainingArguments`), both
turned into command-line flags by `HfArgumentParser`.

Every TrainingArguments option keeps its usual name, meaning and help text; only a few defaults
change so that `--data FILE --name NAME` alone gives a sensible small run on the embedded model.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from transformers import HfArgumentParser, TrainingArguments
from trl import DPOConfig, SFTConfig

# ORPO lives in trl.experimental, which warns on import; the card records the method, and the README says
# ORPO's API may change with TRL, so the notice would only repeat that on every run.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
from trl.experimental.orpo import ORPOConfig  # noqa: E402

from chatapp.settings import Settings

METHODS = ("auto", "qlora", "lora", "prompt-tuning", "dpo", "orpo")
PREFERENCE_METHODS = ("dpo", "orpo")  # preference objectives; their adapter follows the auto rule (qlora on CUDA)
# Learning rates that work for each method when --learning_rate is not given, for rank-stabilised LoRA (see
# use_rslora; scaling 8 at r=16, alpha 32) with LoRA+ at ratio 4 (loraplus_lr_ratio: B steps at 1.2e-3). LoRA:
# 3e-4, since with LoRA+ it named the new identity in >= 80% of held-out answers in both languages on two splits
# (held-out ROUGE-L 0.484 and 0.546), where 5e-4 missed Chinese on one (4/6) and cut general-instruction ROUGE-L by
# 0.12 against 0.04-0.06 (bench/results/finetune-loraplus.md); the QLoRA paper's 2e-4 at scaling 2 (tuned for 7B+
# bases) never taught the 135M base a new fact (bench/results/finetune-identity-proof.md). Soft prompts need a
# much larger step,
DEFAULT_LEARNING_RATE = {"qlora": 3e-4, "lora": 3e-4, "prompt-tuning": 3e-2, "dpo": 2e-4, "orpo": 2e-4}
# Epochs by dataset size: small sets need more passes, large ones fewer. 40 steps of 4 examples at 2e-3 taught
# the identity data its new name in ~4 minutes on 2 CPU cores (bench/results/finetune-recipe.md); a fixed
# 3 epochs of batch 8 at 2e-4 never did (bench/results/finetune-identity-proof.md).
TARGET_STEPS, MIN_EPOCHS, MAX_EPOCHS = 40, 1, 30
GENERAL_INSTRUCTIONS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "finetune" / "alpaca_en_demo.json"


@dataclass
class FinetuneConfig:
    """Options of `python -m finetune` beyond TrainingArguments."""

    name: str = field(metadata={"help": "Name of the adapter: saved to DATA/adapters/NAME and shown as a chat variant."})
    data: str | None = field(default=None, metadata={
        "help": "Training data, JSON or JSONL. SFT: Alpaca records (instruction/input/output) or conversations "
                "(`messages` role/content, or ShareGPT `conversations` from/value). dpo/orpo: TRL's preference "
                "format, prompt/chosen/rejected as text or message lists. Not needed with --from_arena."})
    method: str = field(default="auto", metadata={
        "help": "qlora (4-bit NF4 base + LoRA), lora (full-precision base + LoRA), prompt-tuning (soft prompt), "
                "dpo (TRL DPOTrainer on preference pairs) or orpo (TRL ORPOTrainer). auto = qlora on CUDA, lora on "
                "CPU; dpo and orpo train a LoRA adapter on the same base (4-bit on CUDA).", "choices": list(METHODS)})
    from_arena: bool = field(default=False, metadata={
        "help": "dpo/orpo: build the pairs from the arena's votes (winner's answer chosen, loser's rejected; ties and "
                "'both bad' skipped), read through the arena's export. The pairs are written to the run folder."})
    base: str | None = field(default=None, metadata={
        "help": "Base model: 'embedded' (SmolLM2-135M-Instruct), a Hugging Face id or a local folder. "
                "Default: CHATAPP_BASE_MODEL, else embedded."})
    data_dir: str | None = field(default=None, metadata={
        "help": "The app's data folder (adapters, runs). Default: CHATAPP_DATA_DIR, else ./data."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scaling = alpha / sqrt(r) with --use_rslora, else alpha / r)."})
    # Rank-stabilised LoRA (Kalajdzievski 2023; peft's use_rslora): scaling alpha/sqrt(r) keeps the update's size
    # steady across ranks. At r=16 it is 4x plain LoRA's, which is what lets a common 3e-4 teach the 135M base:
    # on the seed-7 tuning split, 3e-4 x 3 epochs x batch 8 reached held-out ROUGE-L 0.49 with that scaling.
    use_rslora: bool = field(default=True, metadata={
        "help": "Rank-stabilised LoRA: scale the update by alpha/sqrt(r) instead of alpha/r (peft's use_rslora)."})
    # 4, not the paper's 16: at 16 the B step overshot on the seed-7 split (English prompts answered in Chinese);
    # at 4 held-out ROUGE-L rose on every run measured, at 3e-4 and 5e-4 (bench/results/finetune-loraplus.md).
    loraplus_lr_ratio: float = field(default=4.0, metadata={
        "help": "LoRA+ (Hayou et al. 2024) for lora/qlora SFT runs: the B matrices learn this many times faster "
                "than A (0 = off, plain LoRA)."})
    # 0, as Unsloth defaults: on CPU the dropout mask on every LoRA input took 13% of a step (py-spy), and a few
    # epochs on a small set have not overfitted in any run measured here (bench/results/finetune-recipe.md).
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch."})
    target_modules: str = field(default="all-linear", metadata={
        "help": "Modules that get LoRA: 'all-linear' or a comma-separated list such as q_proj,v_proj."})
    num_virtual_tokens: int = field(default=20, metadata={"help": "Prompt tuning: number of virtual tokens."})
    prompt_tuning_init_text: str | None = field(default=None, metadata={
        "help": "Prompt tuning: text whose token embeddings initialise the soft prompt (random if not given)."})
    template_vars: str | None = field(default=None, metadata={
        "help": "Fill {{key}} placeholders in the data, e.g. 'name=Ada,author=Lovelace Labs'."})
    test_size: float = field(default=0.1, metadata={
        "help": "Share (0-1) or number (>=1) of examples held out for evaluation; the split is reproducible with --seed."})
    eval_generate_samples: int = field(default=4, metadata={
        "help": "Held-out examples whose generated answers are scored with ROUGE-L at each evaluation (0 = off)."})
    # Short and few: greedy generation dominates a small CPU run's evaluation time.
    eval_max_new_tokens: int = field(default=48, metadata={"help": "Token limit for the answers generated in evaluation."})
    forgetting_data: str | None = field(default=str(GENERAL_INSTRUCTIONS) if GENERAL_INSTRUCTIONS.exists() else None, metadata={
        "help": "General instructions (any accepted format) for the catastrophic-forgetting check: ROUGE-L of base "
                "and adapter on records not trained on, written to card.json. Empty string = skip."})
    forgetting_samples: int = field(default=10, metadata={"help": "Records used by the forgetting check."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing adapter with the same name."})
    data_fractions: str | None = field(default=None, metadata={
        "help": "How much data is enough: e.g. 0.25,0.5,1 trains one adapter per share of the training records "
                "(NAME-25pct, ...; the held-out records stay the same) and prints held-out ROUGE-L against records."})
    train_fraction: float = field(default=1.0, metadata={
        "help": "Train on this share (0-1] of the training records, taken after the held-out split."})

    def fractions(self) -> list[float]:
        try:
            values = [float(v) for v in (self.data_fractions or "").split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--data_fractions needs numbers in (0, 1], got {self.data_fractions!r}") from None
        if not values or any(not 0 < v <= 1 for v in values):
            raise ValueError(f"--data_fractions needs numbers in (0, 1], got {self.data_fractions!r}")
        return sorted(set(values))

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if not self.name or "/" in self.name or self.name.startswith(".") or self.name == "base":
            raise ValueError(f"--name {self.name!r} is not a usable adapter name (no '/', no leading '.', not 'base')")
        if self.from_arena and self.method not in PREFERENCE_METHODS:
            raise ValueError("--from_arena makes preference pairs: use it with --method dpo or --method orpo")
        if self.from_arena and self.data:
            raise ValueError("give --data FILE or --from_arena, not both")
        if self.data_fractions and self.preference:
            raise ValueError("--data_fractions works with SFT methods (lora, qlora, prompt-tuning), not dpo/orpo")
        if not self.from_arena and not self.data:
            raise ValueError("--data FILE is required" + (" (or --from_arena)" if self.preference else ""))

    @property
    def preference(self) -> bool:
        return self.method in PREFERENCE_METHODS

    def resolved_method(self) -> str:
        """The training method: qlora, lora, prompt-tuning, dpo or orpo (auto resolved by device)."""
        if self.method != "auto":
            return self.method
        return "qlora" if torch.cuda.is_available() else "lora"

    def adapter_method(self) -> str:
        """The adapter and base precision: qlora, lora or prompt-tuning. Preference methods follow auto."""
        method = self.resolved_method()
        if method in PREFERENCE_METHODS:
            return "qlora" if torch.cuda.is_available() else "lora"
        return method

    def variables(self) -> dict[str, str]:
        if not self.template_vars:
            return {}
        pairs = [p for p in self.template_vars.split(",") if p.strip()]
        bad = [p for p in pairs if "=" not in p]
        if bad:
            raise ValueError(f"--template_vars needs key=value pairs, got {bad[0]!r}")
        return {k.strip(): v.strip() for k, v in (p.split("=", 1) for p in pairs)}

    def settings(self) -> Settings:
        return Settings.from_env(base_model=self.base, data_dir=self.data_dir)


def cpu_has_bf16() -> bool:
    """Whether the CPU has bf16 matrix instructions (AVX512-BF16 or AMX-BF16; the flags lscpu shows)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: leave bf16 off, as before
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


@dataclass
class SmallRunDefaults:
    """Defaults for a small adapter run shared by every method's TRL config (help texts of unchanged
    options are the library's). Listed first in each config's bases, so these fields replace TRL's."""

    output_dir: str | None = field(default=None, metadata={"help": "Checkpoints and logs. Default: DATA/runs/NAME."})
    num_train_epochs: float = field(default=0.0, metadata={
        "help": "Total number of training epochs. Default 0 = chosen by dataset size: enough epochs for about "
                f"{TARGET_STEPS} optimizer steps, at least {MIN_EPOCHS} and at most {MAX_EPOCHS} (see --max_steps)."})
    # 4, not TrainingArguments' 8: a padding-free row of 8 examples ran 112 real tokens/s on 2 CPU cores against
    # 135 for 4 (attention grows with the square of the row), and 4 gives twice the optimizer steps per epoch.
    per_device_train_batch_size: int = field(default=4, metadata={
        "help": "The batch size per device accelerator core/CPU for training."})
    learning_rate: float | None = field(default=None, metadata={
        "help": "Initial learning rate. Default by method: 3e-4 for qlora/lora (rank-stabilised, LoRA+ ratio 4), 3e-2 for prompt-tuning, "
                "2e-4 for dpo/orpo."})
    max_length: int | None = field(default=512, metadata={
        "help": "Maximum tokens per example (longer ones are truncated); with packing, the length of a packed row."})
    logging_steps: float = field(default=5, metadata={"help": "Log every X update steps."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate: no, steps or epoch."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to save checkpoints: no, steps, epoch or best."})
    save_total_limit: int | None = field(default=2, metadata={
        "help": "Keep at most this many checkpoints (the best one is always kept with load_best_model_at_end)."})
    load_best_model_at_end: bool = field(default=True, metadata={
        "help": "Load the best checkpoint (by metric_for_best_model) at the end; it becomes the saved adapter."})
    metric_for_best_model: str | None = field(default="eval_loss", metadata={
        "help": "Metric that picks the best checkpoint, e.g. eval_loss or eval_rougeL."})
    # TRL turns checkpointing on by default; a 135M model needs no memory saving and runs ~25% faster without.
    gradient_checkpointing: bool | None = field(default=None, metadata={
        "help": "Deprecated alias of activation_checkpointing (off by default here)."})
    logging_dir: str | None = field(default=None, metadata={
        "help": "Folder for train.log and log.jsonl, readable while the run goes on. Default: output_dir. "
                "(transformers 5 dropped this TrainingArguments option; it keeps its usual name here.)"})
    bf16: bool | None = field(default=None, metadata={
        "help": "bf16 mixed precision (autocast; LoRA weights stay fp32). Default: on with a bf16-capable GPU, and "
                "on a CPU with AVX512-BF16 or AMX, with the frozen base stored in bf16 (with the CPU path's other savings a median 3.05x plain fp32 peft + Trainer on 2 AVX512-BF16 cores, bench/results/finetune-cpu-lora.md); off otherwise."})
    optim: str | None = field(default=None, metadata={
        "help": "Optimizer. Default: paged_adamw_8bit for qlora on CUDA, adamw_torch otherwise."})

    def __post_init__(self) -> None:
        if self.bf16 is None:  # TRL's default is bf16 everywhere, which CPUs without bf16 units run slowly
            if torch.cuda.is_available() and not self.use_cpu:
                self.bf16 = torch.cuda.is_bf16_supported() and not self.fp16
            else:
                self.bf16 = cpu_has_bf16() and not self.fp16
        super().__post_init__()


@dataclass
class TrainConfig(SmallRunDefaults, SFTConfig):
    """SFTConfig with the small-run defaults."""

    packing: bool | None = field(default=None, metadata={
        "help": "Pack examples into rows of max_length with per-example position ids, so no example attends to "
                "another. Default: on with CUDA, off on CPU (each step takes the same examples; see --padding_free)."})
    padding_free: bool | None = field(default=None, metadata={
        "help": "Put a batch's examples end to end in one row with per-example position ids instead of padding them to "
                "the longest (transformers masks each example off from the others). Default: on when packing is off "
                "and no example is longer than max_length (TRL truncates only padded batches), except for prompt "
                "tuning, whose soft prompt starts every row."})


@dataclass
class DPOTrainConfig(SmallRunDefaults, DPOConfig):
    """DPOConfig with the small-run defaults (beta and the rest keep TRL's)."""

    # DPO's sigmoid loss plus the chosen answers' NLL (TRL's 'sft' term, as RPO, Pang et al. 2024): with the sigmoid
    # loss alone the identity pairs' loss fell to 3e-4 while greedy answers moved only 0.120 -> 0.144 ROUGE-L towards
    # the chosen ones (bench/results/finetune-recipe.md): it pushed the rejected answers down, not the chosen up.
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid", "sft"], metadata={
        "help": "Losses to combine (TRL's DPOConfig loss_type, weighted by loss_weights). Default: sigmoid (DPO) and "
                "sft (NLL of the chosen answer)."})


@dataclass
class ORPOTrainConfig(SmallRunDefaults, ORPOConfig):
    """ORPOConfig with the small-run defaults."""


CONFIG_CLASSES = {"dpo": DPOTrainConfig, "orpo": ORPOTrainConfig}  # everything else: TrainConfig (SFT)


def config_class(method: str) -> type:
    return CONFIG_CLASSES.get(method, TrainConfig)


def resolve_epochs(args, n_train: int) -> bool:
    """Set num_train_epochs by dataset size when it was left at 0 and no max_steps is set (returns whether
    it did): the fewest epochs that give TARGET_STEPS optimizer steps, within [MIN_EPOCHS, MAX_EPOCHS]."""
    if args.num_train_epochs > 0 or (args.max_steps and args.max_steps > 0):
        return False
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
    steps_per_epoch = max(1, -(-n_train // per_step))
    args.num_train_epochs = float(min(MAX_EPOCHS, max(MIN_EPOCHS, -(-TARGET_STEPS // steps_per_epoch))))
    return True


def parser(method: str = "auto") -> HfArgumentParser:
    return HfArgumentParser((FinetuneConfig, config_class(method)), description=(
        "Fine-tune the chat model on a dataset and save the result as an adapter (a chat variant in the app). "
        "Every Hugging Face TrainingArguments option is accepted, and with --method dpo/orpo every option of "
        "TRL's DPOConfig/ORPOConfig (beta, loss_type, ...); see --method dpo --help."))


def _method_in(argv: list[str]) -> str:
    """The --method value in argv (the config class, and so the accepted flags, depend on it)."""
    for i, arg in enumerate(argv):
        if arg == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--method="):
            return arg.split("=", 1)[1]
    return "auto"


def parse(argv: list[str] | None = None) -> tuple[FinetuneConfig, TrainingArguments]:
    """Parse flags into both configs, filling the defaults that depend on the run (name, method, device)."""
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    values = vars(parser(_method_in(argv)).parse_args(argv))
    config = FinetuneConfig(**{f.name: values.pop(f.name) for f in fields(FinetuneConfig)})
    # Only options the user typed count as choices; the rest get defaults that depend on the run.
    typed = {a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}
    typed |= {t[3:] for t in typed if t.startswith("no_")}
    return config, training_arguments(config, **{k: v for k, v in values.items() if k in typed})


def training_arguments(config: FinetuneConfig, **chosen) -> TrainingArguments:
    """The method's config for a run (TrainConfig, DPOTrainConfig or ORPOTrainConfig). `chosen` are values
    the user set; the others get defaults that fit the run (output_dir under DATA/runs/NAME, learning rate
    and optimizer by method, ...)."""
    method = config.resolved_method()
    cls = config_class(method)
    known = {f.name for f in fields(cls) if f.init}
    unknown = set(chosen) - known
    if unknown:
        raise ValueError(f"unknown training options: {', '.join(sorted(unknown))}")
    values = dict(chosen)
    if values.get("output_dir") is None:
        values["output_dir"] = str(config.settings().runs_dir / config.name)
    if values.get("logging_dir") is None:
        values["logging_dir"] = values["output_dir"]
    if values.get("learning_rate") is None:
        values["learning_rate"] = DEFAULT_LEARNING_RATE[method]
    if values.get("optim") is None:
        qlora = config.adapter_method() == "qlora" and torch.cuda.is_available()
        values["optim"] = "paged_adamw_8bit" if qlora else "adamw_torch"
    if cls is TrainConfig and values.get("packing") is None:
        values["packing"] = torch.cuda.is_available() and method != "prompt-tuning"
    if method == "prompt-tuning" and values["packing"]:
        raise ValueError("packing does not work with prompt tuning (the soft prompt is prepended to every row); "
                         "drop --packing")
    if not torch.cuda.is_available():
        # accelerate forms a multi-process CPU group (gloo) under torchrun only when told the run is on CPU.
        values.setdefault("use_cpu", True)
    if config.test_size == 0:
        values["eval_strategy"] = "no"
    if values.get("eval_strategy") == "no":
        values.setdefault("load_best_model_at_end", False)
    # Trainer picks the best checkpoint only when saving follows evaluation, so follow the user's eval schedule.
    if "eval_strategy" in values and "save_strategy" not in values:
        values["save_strategy"] = "epoch" if values["eval_strategy"] == "no" else values["eval_strategy"]
    if values.get("eval_steps") and "save_steps" not in values:
        values["save_steps"] = values["eval_steps"]
    metric = values.get("metric_for_best_model", "eval_loss")
    values.setdefault("greater_is_better", metric not in (None, "loss", "eval_loss"))
    return cls(**values)
