"""Adapters on disk, under DATA/adapters/: which folders are finished adapters, whether their weights are
safe to load, and the card that `python -m finetune` writes beside them.

Kept apart from chatapp/model.py, which imports torch and transformers: the evaluation and the fine-tune
CLI read cards and list adapters without loading a model.
"""
from __future__ import annotations

import json
from pathlib import Path

from chatapp.settings import Settings

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")  # unpickling them can run any code
TRAINER_ARGS_FILE = "training_args.bin"
CARD_FILE = "card.json"  # the adapter's record: its base, data file and split, settings and metrics


class UnsafeAdapter(ValueError):
    """An adapter folder whose weights are not safetensors."""


def adapter_folders(settings: Settings) -> dict[str, Path]:
    """Every finished adapter. A folder starting with "." is one being written (training saves to
    .NAME.partial and renames it into place), so it is never listed, even when a run was killed."""
    root = Path(settings.adapters_dir)
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir())
            if not p.name.startswith(".") and (p / "adapter_config.json").is_file()}


def check_safetensors(name: str, folder: Path) -> None:
    """Adapters load only from safetensors: a pickled .bin or .pt from someone else is refused before PEFT
    (which would fall back to torch.load on it) ever opens it."""
    # training_args.bin is the Trainer's pickled settings, which loading an adapter never reads
    pickled = sorted(p.name for p in folder.iterdir()
                     if p.suffix.lower() in PICKLE_SUFFIXES and p.name != TRAINER_ARGS_FILE)
    if pickled:
        raise UnsafeAdapter(f"adapter '{name}' holds pickled weights ({', '.join(pickled)}), which are never loaded; "
                            "only safetensors are: save it again with save_pretrained(safe_serialization=True)")
    if not (folder / "adapter_model.safetensors").is_file():
        raise UnsafeAdapter(f"adapter '{name}' has no adapter_model.safetensors")


def read_card(adapter: Path) -> dict | None:
    """An adapter's card, or None for an adapter made elsewhere (it has none). A broken card raises ValueError."""
    path = Path(adapter) / CARD_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_card(adapter: Path, card: dict) -> None:
    (Path(adapter) / CARD_FILE).write_text(json.dumps(card, indent=2, default=str))
