"""Command line: train (default), merge, synth. Failures end with one line and a non-zero exit."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from chatapp.adapters import read_card

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# bitsandbytes reports at import that optional CPU kernels from the hub are missing; they are not needed here.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

USAGE = """python -m finetune --data FILE --name NAME [options]   train an adapter (see --help)
python -m finetune merge NAME --out DIR                  write a standalone merged model
python -m finetune synth --out FILE --n N                question-answer pairs from ingested documents"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in ("train", "merge", "synth") else "train"
    if argv and argv[0] == command:
        argv = argv[1:]
    try:
        return {"train": _train, "merge": _merge, "synth": _synth}[command](argv)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # the one-line reason; FINETUNE_DEBUG=1 shows the traceback
        if os.environ.get("FINETUNE_DEBUG"):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return 1


def _train(argv: list[str]) -> int:
    from finetune.config import parse

    as_json = "--json" in argv
    argv = [a for a in argv if a != "--json"]
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    if "-h" in argv or "--help" in argv:
        print(USAGE + "\n\n--json  print the adapter card as JSON at the end\n")
    config, args = parse(argv)
    from finetune.train import train, train_fractions

    if config.settings().llm_url and args.process_index == 0:
        print(f"note: chat answers come from {config.settings().llm_url}, but training runs here, in this process; "
              "serve the adapter there afterwards (README: vLLM --lora-modules)", file=sys.stderr)

    if config.data_fractions:
        rows = train_fractions(config, args)
        if args.process_index == 0:
            if as_json:
                print(json.dumps(rows, indent=2))
            else:
                print(f"{'fraction':>8} {'records':>8} {'held-out ROUGE-L':>17} {'eval loss':>10}  adapter")
                for r in rows:
                    rouge = "-" if r["eval_rougeL"] is None else f"{r['eval_rougeL']:.3f}"
                    loss = "-" if r["eval_loss"] is None else f"{r['eval_loss']:.3f}"
                    print(f"{r['fraction']:>8g} {r['records']:>8} {rouge:>17} {loss:>10}  {r['adapter']}")
        return 0
    path = train(config, args)
    if args.process_index == 0:
        card = read_card(path)
        print(json.dumps(card, indent=2) if as_json else f"adapter '{config.name}' saved to {path}")
    return 0


def _merge(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune merge", description=(
        "Merge a LoRA adapter into a full-precision copy of its base and save a standalone model "
        "(merging into a 4-bit base is not supported upstream, so the base is always reloaded in full precision)."))
    parser.add_argument("name", help="adapter name under DATA/adapters/")
    parser.add_argument("--out", required=True, help="folder for the merged model (safetensors + tokenizer)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                        help="dtype of the saved weights")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    options = parser.parse_args(argv)
    from finetune.merge import merge

    out = merge(options.name, options.out, options.dtype)
    print(json.dumps({"name": options.name, "out": str(out)}) if options.json else f"merged model written to {out}")
    return 0


def _synth(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune synth", description=(
        "Make question-answer pairs from the ingested documents with the current chat model. Each pair keeps "
        "its source; repeated questions are dropped. Output: Alpaca records (JSON array for .json, else JSONL)."))
    parser.add_argument("--out", required=True, help="file to write (.json or .jsonl)")
    parser.add_argument("--n", type=int, default=100, help="number of pairs wanted (default 100)")
    parser.add_argument("--variant", default="base", help="chat variant that writes the pairs (default base)")
    parser.add_argument("--max_new_tokens", type=int, default=160, help="token limit per generated pair")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    options = parser.parse_args(argv)
    if options.n < 1:
        raise ValueError("--n must be at least 1")
    from chatapp.settings import Settings
    from finetune.synth import synthesize
    from loaders.store import get_store

    store = get_store(Settings.from_env())
    try:
        result = synthesize(options.out, options.n, variant=options.variant, max_new_tokens=options.max_new_tokens,
                            progress=None if options.json else lambda done, tried: print(
                                f"\r{done}/{options.n} pairs from {tried} passages", end="", file=sys.stderr))
    finally:
        store.close()  # embedded Qdrant must be closed before interpreter shutdown
    if not options.json:
        print(file=sys.stderr)
    print(json.dumps(result) if options.json else f"{result['pairs']} pairs written to {result['out']}")
    return 0
