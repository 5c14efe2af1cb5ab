"""Retrieval: is the passage that holds the answer (its file, its page for a PDF, the answer in its text)
among the top k? Three arms on every answerable question of bench/questions.jsonl, in one run: the store's
dense search (the plain baseline), its hybrid dense + BM25 search in the store's order, and the chat's
choice (20 hybrid candidates, the top k by evidence: chatapp.rag), which `python -m loaders search` and
the Documents tab's search return too.

    python bench/retrieval.py [--k 5] [--data DIR] [--out bench/results/retrieval.md]
    python bench/retrieval.py --chunk-sizes 500,700,1000,1500 --out bench/results/chunking.md

A last row asks issue 15's looser question for the PDF: is the right page among the top k's pages, whether
or not the passage of it holds the answer.

Without --data the whole shared corpus is ingested into a scratch folder first: its README and its fine-tune
datasets too (3,090 chunks, against the 1,537 of bench/answers.py's store), so search meets more distractors. With --chunk-sizes it is
ingested once per size (overlap 15% of the size, as the default 1000/150) and the arms are compared across
sizes: the chat asks for the same top k passages whatever their size.
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

from machine import matrix_units  # noqa: E402  (bench/machine.py, beside this script)

from chatapp import rag  # noqa: E402
from chatapp.settings import Settings  # noqa: E402
from eval.answers import is_right, read_questions  # noqa: E402
from loaders.store import get_store  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"


ARMS = {"dense": "dense only (baseline)", "hybrid": "hybrid dense + BM25, the store's order",
        "evidence": "chat and `loaders search`: 20 hybrid candidates, top k by evidence"}


def on_page(passage: dict, question) -> bool:
    """The passage is on the question's PDF page, whether or not it holds the answer (issue 15's measure)."""
    return passage.get("source") == question.source and passage.get("page") == question.page


def hit_rates(store, questions, k: int, candidates: int) -> tuple[dict, dict]:
    """Per arm, for each question: the right passage among the top k; and the right PDF page among theirs."""
    found = {arm: [] for arm in ARMS}
    paged = {arm: [] for arm in ARMS}
    for question in questions:
        for arm, hybrid in (("dense", False), ("hybrid", True)):
            hits = store.search(question.question, k=k, hybrid=hybrid)
            passages = [{**doc.metadata, "text": doc.page_content} for doc, _ in hits]
            found[arm].append(any(is_right(p, question) for p in passages))
            paged[arm].append(any(on_page(p, question) for p in passages))
        chosen = rag.choose_passages(question.question, rag.retrieve(store, [question.question], candidates), k)
        found["evidence"].append(any(is_right(p.to_json(), question) for p in chosen))
        paged["evidence"].append(any(on_page(p.to_json(), question) for p in chosen))
    return found, paged


def measure(questions, k: int, data: Path | None, **overrides) -> dict:
    """hit_rates on the store in `data`, or on the corpus ingested into a scratch folder with `overrides`."""
    with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as scratch:
        settings = Settings.from_env(data_dir=data or Path(scratch), **overrides)
        store = get_store(settings)
        try:
            if data is None:
                started = time.perf_counter()
                results = store.ingest([str(CORPUS)])
                print(f"ingested {sum(r.ok for r in results)} sources ({store.count()} chunks of "
                      f"{settings.chunk_size} characters) in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            return hit_rates(store, questions, k, settings.candidates)
        finally:
            store.close()


def chunking(questions, k: int, sizes: list[int]) -> str:
    lines = [f"# Chunk size against the right passage in the top {k} "
             f"(`python bench/retrieval.py --chunk-sizes {','.join(map(str, sizes))}`)", "",
             f"{os.cpu_count()} cores; matrix units: {', '.join(matrix_units()) or 'none'}; "
             f"{len(questions)} answerable questions of questions.jsonl; overlap 15% of the size", "",
             "| chunk size | questions | " + " | ".join(ARMS.values()) + " |", "|---:|---|" + "---:|" * len(ARMS)]
    for size in sizes:
        found, _ = measure(questions, k, None, chunk_size=size, chunk_overlap=size * 15 // 100)
        for name, keep in (("all answerable", lambda q: True), ("holdout split", lambda q: q.split == "holdout")):
            index = [i for i, q in enumerate(questions) if keep(q)]
            lines.append(f"| {size} | {name} | " + " | ".join(
                f"{sum(found[arm][i] for i in index)}/{len(index)}" for arm in ARMS) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--data", type=Path, help="a data folder whose store already holds the corpus")
    parser.add_argument("--questions", type=Path, default=ROOT / "bench" / "questions.jsonl")
    parser.add_argument("--chunk-sizes", help="comma-separated chunk sizes to compare (the corpus is ingested per size)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    questions = [q for q in read_questions(args.questions) if q.answerable]
    if args.chunk_sizes:
        text = chunking(questions, args.k, [int(x) for x in args.chunk_sizes.split(",")])
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
        return 0
    found, paged = measure(questions, args.k, args.data)
    subsets = {"all answerable": lambda q: True, "PDF": lambda q: q.source.endswith(".pdf"),
               "paraphrases": lambda q: q.paraphrase, "holdout split": lambda q: q.split == "holdout"}
    lines = [f"# Right passage in the top {args.k} (`python bench/retrieval.py --k {args.k}`)", "",
             f"{os.cpu_count()} cores; matrix units: {', '.join(matrix_units()) or 'none'}; "
             f"{len(questions)} answerable questions of {args.questions.name}", "",
             "| questions | n | " + " | ".join(ARMS.values()) + " |", "|---|---:|" + "---:|" * len(ARMS)]
    report = {}
    for name, keep in subsets.items():
        index = [i for i, q in enumerate(questions) if keep(q)]
        counts = {arm: sum(found[arm][i] for i in index) for arm in ARMS}
        report[name] = {"n": len(index), **counts}
        lines.append(f"| {name} | {len(index)} | " + " | ".join(
            f"{n}/{len(index)} ({n / len(index):.0%})" for n in counts.values()) + " |")
    pdf = [i for i, q in enumerate(questions) if q.source.endswith(".pdf")]
    page_counts = {arm: sum(paged[arm][i] for i in pdf) for arm in ARMS}
    report["PDF page"] = {"n": len(pdf), **page_counts}
    lines.append(f"| PDF: the right page (any passage of it, with or without the answer) | {len(pdf)} | " + " | ".join(
        f"{n}/{len(pdf)} ({n / len(pdf):.0%})" for n in page_counts.values()) + " |")
    missed = {arm: [q.id for i, q in enumerate(questions) if not found[arm][i]] for arm in ("hybrid", "evidence")}
    lines += ["", f"Missed by hybrid: {', '.join(missed['hybrid']) or 'none'}",
              f"Missed by the chat's choice: {', '.join(missed['evidence']) or 'none'}"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps({"k": args.k, "subsets": report, "missed": missed}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
