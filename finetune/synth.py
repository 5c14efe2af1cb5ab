"""`python -m finetune synth`: question-answer pairs written by the chat model from the ingested documents.

For users with documents but no dataset. Passages are taken evenly across the store; each gives at most
one pair, which keeps its source (and page); questions already seen (case and punctuation aside) are
dropped. The output is Alpaca records plus `source`, readable by `read_records` and `--data`.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from chatapp.backends import make_registry
from chatapp.generation import GenerationSettings
from chatapp.model import ModelRegistry
from chatapp.settings import Settings

# The 135M model follows this "Question: / Answer:" form well for the question but often stops at
# "Answer:" (4 of 6 corpus passages), and asked for a question alone it mostly writes no question at all;
# so the question comes from this form, and a missing answer is asked for on its own.
PAIR_INSTRUCTION = ("Read the passage, then write one question that the passage answers and the answer, "
                    "in exactly this form:\nQuestion: <question>\nAnswer: <answer>\n\nPassage:\n{passage}")
ANSWER_INSTRUCTION = ("Answer the question using only the passage. Reply with the answer only.\n\n"
                      "Passage:\n{passage}\n\nQuestion: {question}")
PAIR = re.compile(r"question\s*:\s*(?P<q>[^\n]+)(?:\s*answer\s*:(?P<a>.*))?", re.IGNORECASE | re.DOTALL)
MAX_PASSAGE_CHARS = 1500


def passages(store) -> list[dict]:
    """Every stored chunk with text as {text, source, page}, in a stable order (by source, then chunk id)."""
    found = [{"text": doc.page_content, "source": doc.metadata.get("source"), "page": doc.metadata.get("page"),
              "order": (str(doc.metadata.get("source")), doc.id)}
             for doc in store.chunks() if doc.page_content.strip()]
    return sorted(found, key=lambda p: p["order"])


def parse_pair(text: str) -> tuple[str | None, str | None]:
    """(question, answer) from a reply in PAIR_INSTRUCTION's form; either is None when unusable."""
    match = PAIR.search(text or "")
    if not match:
        return None, None
    question = match["q"].strip()
    # "How does the passage answer the question?" teaches nothing: it must be about the content.
    if len(question) <= 5 or not question.endswith("?") or re.search(r"\b(passage|question)\b", question, re.I):
        question = None
    return question, parse_answer(match["a"] or "")


def parse_answer(text: str) -> str | None:
    answer = re.sub(r"^\s*answer\s*:\s*", "", text or "", flags=re.IGNORECASE).strip()
    lines = [line.strip() for line in answer.splitlines() if line.strip()]
    if not lines or re.match(r"question\s*:", lines[0], re.I):  # empty, or straight on to another question
        return None
    if len(lines) >= 4 and len(set(lines)) <= len(lines) / 2:  # a small model looping on one line
        return None
    # Cut off by the token limit mid-sentence: keep the whole sentences, if there are any.
    cut = re.match(r"(?s)(.*[.!?])\s", answer + " ")
    return cut.group(1).strip() if cut and not answer.endswith((".", "!", "?")) else answer


def _key(question: str) -> str:
    return " ".join(re.findall(r"\w+", question.lower()))


def spread(items: list, count: int) -> list:
    """`count` items evenly spaced over the list, so pairs come from every document, not just the first."""
    if count >= len(items):
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def write_pair(registry: ModelRegistry, passage: str, variant: str, generation: GenerationSettings,
               seen: set[str]) -> tuple[str, str] | None:
    """A new question the passage answers and its answer from the passage; None if the model gave none."""
    question, answer = parse_pair(registry.generate(
        [{"role": "user", "content": PAIR_INSTRUCTION.format(passage=passage)}], variant, generation))
    if question is None or _key(question) in seen:
        return None
    if answer is None:
        answer = parse_answer(registry.generate(
            [{"role": "user", "content": ANSWER_INSTRUCTION.format(passage=passage, question=question)}],
            variant, generation))
    return (question, answer) if answer else None


def synthesize(out: str | Path, n: int, variant: str = "base", max_new_tokens: int = 160,
               settings: Settings | None = None, registry: ModelRegistry | None = None, progress=None) -> dict:
    from loaders.store import get_store

    settings = settings or Settings.from_env()
    store = get_store(settings)
    chunks = passages(store)
    if not chunks:
        raise ValueError("no documents ingested yet: add some with `python -m loaders ingest PATH`")
    registry = registry or make_registry(settings)
    generation = GenerationSettings(max_new_tokens=max_new_tokens)
    # Up to 3 passages per wanted pair: a small model often writes no usable pair or repeats a question.
    candidates = spread(chunks, min(len(chunks), 3 * n))
    pairs, seen, tried = [], set(), 0
    for chunk in candidates:
        if len(pairs) >= n:
            break
        tried += 1
        pair = write_pair(registry, chunk["text"][:MAX_PASSAGE_CHARS], variant, generation, seen)
        if pair:
            seen.add(_key(pair[0]))
            record = {"instruction": pair[0], "input": "", "output": pair[1], "source": chunk["source"]}
            if chunk["page"] is not None:
                record["page"] = chunk["page"]
            pairs.append(record)
        if progress:
            progress(len(pairs), tried)
    if not pairs:
        raise ValueError(f"the model wrote no usable question-answer pair from {tried} passages")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        out.write_text(json.dumps(pairs, indent=2, ensure_ascii=False))
    else:
        out.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    return {"out": str(out), "pairs": len(pairs), "passages_tried": tried, "passages_in_store": len(chunks)}
