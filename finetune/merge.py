"""`python -m finetune merge NAME --out DIR`: an adapter folded into a full-precision copy of its base."""
from __future__ import annotations

from pathlib import Path

import torch

from chatapp.loading import base_folder
from chatapp.adapters import check_safetensors, read_card
from chatapp.settings import Settings


def merge(name: str, out: str | Path, dtype: str = "bfloat16", settings: Settings | None = None) -> Path:
    """Write base + LoRA as one standalone model (safetensors + tokenizer) that loads without PEFT."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = settings or Settings.from_env()
    adapter = Path(settings.adapters_dir) / name
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no adapter '{name}' in {settings.adapters_dir}")
    check_safetensors(name, adapter)
    if PeftConfig.from_pretrained(adapter).is_prompt_learning:
        raise ValueError(f"'{name}' is a prompt-tuning adapter: a soft prompt has no weights to merge into the base")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty")
    card = read_card(adapter)
    base = card["base"]["model"] if card else settings.base_model
    folder = base_folder(Settings.from_env(data_dir=settings.data_dir, models_dir=settings.models_dir, base_model=base))
    # Full precision on purpose: merging into a 4-bit base is not supported upstream (and would round the sum).
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.to(getattr(torch, dtype)).save_pretrained(out)
    AutoTokenizer.from_pretrained(folder).save_pretrained(out)
    return out
