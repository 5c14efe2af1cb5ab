"""Grounded answers on bench/questions.jsonl over the whole shared corpus: the plain pipeline beside ours.

    python bench/answers.py [--split holdout] [--variants base,NAME] [--limit N]
    python bench/answers.py --questions bench/unseen.jsonl --split unseen   # written after the tuning

"plain" is retrieval as it was (the store's top_k by cosine, dense only), the prompt
without the evidence sentence, and no extractive fallback; sources are still chosen by evidence, since
the model's own [n] markers were the old way and are no measure at all. "ours" is the app's defaults.
Both arms run in this process on the same store and model, for every variant given.

Prints and writes bench/results/answers-SPLIT.md and .json: right passage listed, fact in an evidence
quote, fact stated in the answer (and by the model itself, before any fallback), unsupported figures
flagged, invented figures left unflagged, and the median first-token time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import matrix_units  # noqa: E402
from chatapp.model import ModelRegistry  # noqa: E402
from chatapp.settings import Settings  # noqa: E402
from eval.answers import evaluate, read_questions  # noqa: E402
from loaders.store import get_store  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"
RESULTS = ROOT / "bench" / "results"
COLUMNS = ["right_source", "fact_in_quote", "fact_stated", "model_stated", "unsupported_flagged",
           "invented_unflagged", "no_source_questions_with_sources", "hit@4", "prompt_hit", "first_token_p50_s"]


def describe() -> str:
    units = matrix_units()
    return f"{os.cpu_count()} cores, matrix units: {', '.join(units) or 'none'}"


def plain(settings: Settings) -> Settings:
    return replace(settings, candidates=settings.top_k, hybrid=False, evidence_in_prompt=False,
                   extractive_fallback=False, name_check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", default=str(ROOT / "bench" / "questions.jsonl"))
    parser.add_argument("--split", default="all", help="tune, holdout or all (default all)")
    parser.add_argument("--variants", default="base", help="comma-separated: base and adapter names")
    parser.add_argument("--arms", default="plain,ours")
    parser.add_argument("--limit", type=int, default=None, help="first N questions only (a quick look)")
    parser.add_argument("--data-dir", default=str(ROOT / "bench" / "scratch" / "answers-data"))
    args = parser.parse_args()

    questions = read_questions(args.questions, None if args.split == "all" else args.split)[: args.limit]
    settings = Settings.from_env(data_dir=args.data_dir)
    store = get_store(settings)
    ingested = store.ingest([CORPUS / "pdf", CORPUS / "html", CORPUS / "json", CORPUS / "youtube"])
    assert all(r.ok for r in ingested), [r.summary() for r in ingested if not r.ok]
    registry = ModelRegistry(settings).load()
    print(describe(), flush=True)
    print(f"{len(questions)} questions ({args.split}), {store.count()} chunks, model {registry.info()['base']}", flush=True)

    rows, records = [], {}
    for variant in args.variants.split(","):
        for arm in args.arms.split(","):
            arm_settings = plain(settings) if arm == "plain" else settings
            start = time.perf_counter()
            report = evaluate(questions, store=store, registry=registry, settings=arm_settings, variant=variant,
                              progress=lambda done, total, q: print(f"  {variant}/{arm} {done}/{total}", end="\r", flush=True))
            summary = {"arm": arm, **report.summary(), "seconds": round(time.perf_counter() - start, 1)}
            print("\n" + json.dumps(summary), flush=True)
            rows.append(summary)
            records[f"{variant}/{arm}"] = report.to_json()["records"]

    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"answers-{args.split}"
    stem.with_suffix(".json").write_text(json.dumps({"machine": describe(), "rows": rows, "records": records}, indent=1,
                                                    ensure_ascii=False))
    asked = Path(args.questions).resolve()
    shown = asked.relative_to(ROOT) if asked.is_relative_to(ROOT) else asked
    chosen = "" if shown == Path("bench/questions.jsonl") else f" --questions {shown}"
    lines = [f"# Grounded answers, {len(questions)} questions ({args.split} split of {shown})", "",
             f"`python bench/answers.py{chosen} --split {args.split} --variants {args.variants}` on {describe()}", "",
             "| variant | arm | questions | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 3)]
    for row in rows:
        lines.append(f"| {row['variant']} | {row['arm']} | {row['questions']} | "
                     + " | ".join(str(row.get(c)) for c in COLUMNS) + " |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
