"""Does a flag help the identity recipe? `python -m finetune` without and with FLAGS, in one run, on one split.

    python bench/finetune_flags.py --seed 7 --test_size 0.2 -- --loraplus_lr_ratio 16

Each arm is the CLI as a user types it (--data identity.json --name ... --template_vars ..., the split's
--seed/--test_size, then the arm's flags), scored as bench/finetune_recipe.py scores: greedy answers of the
run's own held-out records, ROUGE-L F1 with the unicode tokenizer, and the share naming Ada/Lovelace per
language. Prints one JSON line per arm; bench/results/finetune-loraplus.md holds the LoRA+ runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import finetune_recipe as recipe  # noqa: E402  (bench/finetune_recipe.py, beside this script)


def arm(work: Path, flags: list[str], seed: int, test_size: float) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    settings = recipe.Settings.from_env(data_dir=work)
    _, held_out = recipe.split(recipe.identity_examples(), test_size, seed)
    argv = ["--data", str(recipe.DATA), "--name", "arm", "--template_vars", recipe.VARIABLES, "--seed", str(seed),
            "--test_size", str(test_size), *flags]
    run = recipe.run_finetune(argv, {**os.environ, "CHATAPP_DATA_DIR": str(work)}, work / "run.log", 3600)
    adapter = Path(settings.adapters_dir) / "arm"
    scored = recipe.score(recipe.answer(settings, held_out, 64, adapter), held_out)
    card = recipe.card_of(adapter)
    return {"extra": flags, "wall": run["wall_seconds"], "rougeL": scored.rougeL, "named": scored.named_by_language,
            "steps": card["optimizer_steps"], "train_s": card["train_seconds"],
            "forgetting": {k: card["forgetting"][k] for k in ("base_rougeL", "adapter_rougeL", "change")}
            if card.get("forgetting") else None,
            "answers": [a[:60] for a in scored.answers[:3]]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=recipe.SEED)
    parser.add_argument("--test_size", type=float, default=recipe.TEST_SIZE)
    parser.add_argument("--work", default=str(recipe.ROOT / "data" / "bench-flags"))
    parser.add_argument("--no-baseline", action="store_true",
                        help="run only the arm with FLAGS (its baseline measured earlier on the same split)")
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="after --: the flags of the second arm")
    opts = parser.parse_args(argv)
    flags = [f for f in opts.flags if f != "--"]
    for extra in ([flags] if opts.no_baseline else [[], flags]):
        print(json.dumps(arm(Path(opts.work), extra, opts.seed, opts.test_size), ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
