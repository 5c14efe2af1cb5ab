"""Questions about names the documents never mention: how many reach the model, and how many answerable
questions the name check turns away. Both arms in one run on the same store (no model is loaded): the
relevance threshold alone (the plain baseline, `CHATAPP_NAME_CHECK=false`) and the threshold plus the name
check (chatapp.rag.unmentioned_names).

    python bench/names.py [--out bench/results/names.md]

Questions: every one of bench/questions.jsonl, unseen.jsonl and fresh.jsonl, and bench/names.jsonl (35 answerable questions that name
people, places, products and the sources themselves, some as the documents do not spell them: "Googlers",
"the NYT article"; and 20 about names the shared corpus never mentions). The store is the whole shared corpus,
as bench/answers.py stores it (in the same scratch folder, so either reuses the other's).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import matrix_units  # noqa: E402  (bench/machine.py, beside this script)

from chatapp import prompts, rag  # noqa: E402
from chatapp.settings import Settings  # noqa: E402
from eval.answers import read_questions  # noqa: E402
from loaders.store import get_store  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT / "bench" / "scratch" / "answers-data")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    settings = Settings.from_env(data_dir=args.data_dir)
    store = get_store(settings)
    ingested = store.ingest([CORPUS / "pdf", CORPUS / "html", CORPUS / "json", CORPUS / "youtube"])
    assert all(r.ok for r in ingested), [r.summary() for r in ingested if not r.ok]
    sets = {name: [(q.question, q.answerable) for q in read_questions(ROOT / "bench" / name)]
            for name in ("questions.jsonl", "unseen.jsonl", "fresh.jsonl")}
    sets["names.jsonl"] = [(q["question"], q["answerable"]) for q in map(json.loads, open(ROOT / "bench" / "names.jsonl"))]
    lines = ["# Questions about names the documents never mention (`python bench/names.py`)", "",
             f"matrix units: {', '.join(matrix_units()) or 'none'}; {store.count()} chunks of the shared corpus", "",
             "| questions | n | reach the model: threshold alone (plain) | threshold + name check |",
             "|---|---:|---:|---:|"]
    turned_away = []
    for name, questions in sets.items():
        for answerable in (True, False):
            asked = [q for q, a in questions if a == answerable and not prompts.is_small_talk(q)]  # never searched
            plain = checked = 0
            for question in asked:
                candidates = rag.retrieve(store, [question], settings.candidates)
                if not rag.covers(question, candidates, settings.score_threshold):
                    continue
                plain += 1
                unmentioned = rag.unmentioned_names(question, candidates, store)
                checked += not unmentioned
                if unmentioned:
                    turned_away.append(f"- {'answerable' if answerable else 'no source'}: {question} "
                                       f"(\"The documents don't mention {' or '.join(unmentioned)}\")")
            kind = "answerable" if answerable else "off-topic"
            lines.append(f"| {name}, {kind} | {len(asked)} | {plain} | {checked} |")
    store.close()
    text = "\n".join(lines + ["", "Turned away by the name check:", *turned_away])
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
