"""Ask the documents from the command line.

    python -m chatapp ask "How many warmup steps were used?" ["Another question?" ...] [--json] [--style cot]

Several questions are answered in one process (the model loads once); with --json, one object a line.

Reads the store and the adapters under CHATAPP_DATA_DIR (default ./data).
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import logging
import sys

from chatapp.prompts import STYLES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chatapp", description="Answers from your documents, with sources.")
    commands = parser.add_subparsers(dest="command", required=True)
    ask = commands.add_parser(
        "ask",
        help="answer a question from the ingested documents",
        description="Retrieve passages for QUESTION from the store in CHATAPP_DATA_DIR, answer with the model and "
        "list the sources. Ingest documents first with `python -m loaders ingest PATH`.",
    )
    ask.add_argument("questions", nargs="+", metavar="QUESTION", help="one or more questions, each in quotes")
    ask.add_argument("--json", action="store_true",
                     help='print {"answer", "reasoning", "sources", "evidence", "unsupported"} as one JSON object a line')
    ask.add_argument("--style", choices=list(STYLES), default="cot", help="prompt style (default cot: chain-of-thought)")
    ask.add_argument("--variant", default="base", help='"base" or the name of an adapter under DATA/adapters (default base)')
    ask.add_argument("--k", type=int, default=None, help="passages to retrieve (default CHATAPP_TOP_K)")
    ask.add_argument("--max-new-tokens", type=int, default=256, help="longest answer in tokens (default 256)")
    return parser


def run_ask(args) -> int:
    from transformers.utils import logging as hf_logging

    from chatapp.backends import make_registry
    from chatapp.generation import GenerationSettings
    from chatapp.rag import ask
    from chatapp.settings import Settings
    from loaders.store import get_store

    hf_logging.disable_progress_bar()  # stdout/stderr stay readable for scripts
    settings = Settings.from_env()
    registry = make_registry(settings)
    if args.variant not in registry.variants():
        raise ValueError(f"unknown variant {args.variant!r}; known: {', '.join(registry.variants())}")
    store = get_store(settings)
    try:
        for number, question in enumerate(args.questions):
            result = ask(
                question, [], store=store, registry=registry, variant=args.variant, style=args.style,
                generation=GenerationSettings(max_new_tokens=args.max_new_tokens), k=args.k, settings=settings,
            )
            if args.json:
                print(json.dumps({"question": question, **result.to_json()}, ensure_ascii=False), flush=True)
                continue
            print(("\n" if number else "") + f"Q: {question}")
            if result.reasoning:
                print(f"Reasoning: {result.reasoning}")
            print(result.answer)
            if result.unsupported:
                print(f"  unsupported by the sources: {', '.join(result.unsupported)}"
                      + (f" (the model said: {result.model_answer})" if result.model_answer else ""))
            for source in result.sources:
                where = f", {source.location}" if source.location else ""
                print(f"  [{source.number}] {source.source}{where} (score {source.score:.2f}): \u201c{source.quote}\u201d")
    finally:
        store.close()  # release the embedded store's folder lock now, not in a noisy interpreter shutdown
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        return run_ask(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, no traceback: the reason is what a user needs
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {message.strip(chr(39) + chr(34))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
