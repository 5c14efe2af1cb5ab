"""Grounded answers measured on a question set over the user's own store: retrieval (hit@k, MRR), the
right passage listed, the fact in an evidence quote, the fact stated, and figures invented.

    questions = read_questions("questions.jsonl")       # or pairs from `python -m finetune synth`
    report = evaluate(questions, store=store, registry=registry, settings=settings, variant="base")
    report.summary()                                   # {"right_source": 0.96, "fact_in_quote": ...}

`python -m eval rag`, the Evaluate tab and bench/answers.py all call `evaluate`.

A question line is {"question", "answer", "source", "page"} (our set, see bench/questions.jsonl) or an
Alpaca record with `source` (`instruction` is the question, `output` the answer), as synth writes.
A line without `answer` and `source` is one that must get no sources (off-topic, small talk).
"""
from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from chatapp import rag
from chatapp.datasets import DatasetError, records_of
from chatapp.evidence import figures
from chatapp.generation import GenerationSettings
from loaders.terms import figure_key

HIT_AT = (1, 4, 20)


@dataclass
class Question:
    question: str
    answer: str | None = None
    source: str | None = None
    page: int | None = None
    id: str = ""
    paraphrase: bool = False
    split: str = ""

    @property
    def answerable(self) -> bool:
        return bool(self.answer and self.source)


def read_questions(path: str | Path, split: str | None = None) -> list[Question]:
    """Questions from a JSON list or JSONL file; `split` keeps only that split ("tune", "holdout").
    A bad record raises DatasetError (a ValueError) naming the file, the record and its line."""
    questions = []
    for number, (row, where) in enumerate(records_of(path), 1):
        question = (row.get("question") or row.get("instruction")) if isinstance(row, dict) else None
        if not isinstance(question, str) or not question.strip():
            raise DatasetError(f"{path}: record {number}{where} has no question (expected an object with "
                               f'"question", or "instruction" as synth writes)')
        questions.append(Question(question=question.strip(), answer=row.get("answer", row.get("output")),
                                  source=row.get("source"), page=row.get("page"), id=str(row.get("id") or number),
                                  paraphrase=bool(row.get("paraphrase")), split=str(row.get("split") or "")))
    return [q for q in questions if split is None or q.split == split]


def normalized(text: str) -> str:
    """Compared text: lowercase, one space, figures as figure keys (4,000 = 4000)."""
    text = " ".join((text or "").split()).lower()
    return re.sub(r"\d{1,3}(?:,\d{3})+", lambda m: m.group(0).replace(",", ""), text)


def holds(text: str, fact: str) -> bool:
    return bool(fact) and normalized(fact) in normalized(text)


def is_right(passage: dict, question: Question) -> bool:
    """The passage is the one holding the answer: its file, its page (PDFs), and the answer in its text."""
    return (passage.get("source") == question.source
            and (question.page is None or passage.get("page") == question.page)
            and holds(passage.get("text", ""), question.answer))


def invented(answer_text: str, passages: list[str]) -> list[str]:
    """Figures of the answer that no passage holds: an independent check on the evidence module's flags."""
    known = {figure_key(f) for text in passages for f in figures(text)}
    return [f for f in figures(answer_text) if figure_key(f) not in known]


@dataclass
class Record:
    id: str
    question: str
    expected: str | None
    answer: str
    model_answer: str
    sources: list[str]
    quotes: list[str]
    unsupported: list[str]
    rank: int | None  # 1-based rank of the right passage among the store's top candidates
    prompt_rank: int | None  # its rank among the passages the prompt was given (by evidence)
    right_source: bool
    fact_in_quote: bool
    fact_stated: bool
    model_stated: bool  # the model's own answer held the fact (before any extractive fallback)
    invented_unflagged: list[str]
    first_token_s: float | None
    seconds: float
    answerable: bool
    paraphrase: bool


@dataclass
class Report:
    variant: str
    records: list[Record] = field(default_factory=list)

    def summary(self) -> dict:
        answerable = [r for r in self.records if r.answerable]
        other = [r for r in self.records if not r.answerable]
        n = max(len(answerable), 1)

        def share(flag) -> float:
            return round(sum(1 for r in answerable if flag(r)) / n, 3)

        firsts = sorted(r.first_token_s for r in self.records if r.first_token_s is not None)
        summary = {
            "variant": self.variant,
            "questions": len(answerable),
            **{f"hit@{k}": share(lambda r, k=k: r.rank is not None and r.rank <= k) for k in HIT_AT},
            "mrr": round(sum(1 / r.rank for r in answerable if r.rank) / n, 3),
            "prompt_hit": share(lambda r: r.prompt_rank is not None),
            "right_source": share(lambda r: r.right_source),
            "fact_in_quote": share(lambda r: r.fact_in_quote),
            "fact_stated": share(lambda r: r.fact_stated),
            "model_stated": share(lambda r: r.model_stated),
            "unsupported_flagged": sum(len(r.unsupported) for r in self.records),
            "invented_unflagged": sum(len(r.invented_unflagged) for r in self.records),
            "no_source_questions": len(other),
            "no_source_questions_with_sources": sum(1 for r in other if r.sources),
            "first_token_p50_s": round(firsts[len(firsts) // 2], 3) if firsts else None,
        }
        paraphrased = [r for r in answerable if r.paraphrase]
        if paraphrased:
            summary["right_source_paraphrased"] = round(sum(r.right_source for r in paraphrased) / len(paraphrased), 3)
        return summary

    def to_json(self) -> dict:
        return {"summary": self.summary(), "records": [asdict(r) for r in self.records]}


def evaluate(questions: list[Question], *, store, registry, settings, variant: str = "base",
             generation: GenerationSettings | None = None, progress=None) -> Report:
    """Ask every question (no history) and measure what the user would see."""
    generation = generation or GenerationSettings(max_new_tokens=96)
    report = Report(variant)
    for done, question in enumerate(questions):
        if progress:
            progress(done, len(questions), question.question)
        candidates = store.search(question.question, max(HIT_AT))
        rank = next((i for i, (doc, _) in enumerate(candidates, 1)
                     if question.answerable and is_right({"text": doc.page_content, **doc.metadata}, question)), None)
        start, first = time.perf_counter(), None
        final = None
        for final in rag.answer(question.question, [], store=store, registry=registry, variant=variant,
                                generation=generation, settings=settings):
            if first is None and (final.raw or final.done) and final.status not in ("waiting",):
                first = time.perf_counter() - start
        seconds = time.perf_counter() - start
        listed = [s.to_json() for s in final.sources]
        prompt_rank = next((i for i, s in enumerate(reversed(final.retrieved), 1)
                            if question.answerable and is_right(s.to_json(), question)), None)
        model_answer = final.model_answer or final.answer
        flagged = {figure_key(f) for u in final.unsupported for f in figures(u)}
        # The model's own figures, against every passage it was given; a quote that replaced its answer is
        # text of a listed passage, and its "From FILE, p. N:" lead-in is no claim.
        unflagged = [f for f in invented(model_answer, [s.text for s in final.retrieved])
                     if figure_key(f) not in flagged and final.status == "answered"]
        report.records.append(Record(
            id=question.id, question=question.question, expected=question.answer, answer=final.answer,
            model_answer=final.model_answer, sources=[f"{s['source']}#{s['page']}" for s in listed],
            quotes=[s["quote"] for s in listed], unsupported=list(final.unsupported), rank=rank,
            prompt_rank=prompt_rank,
            right_source=question.answerable and any(is_right(s, question) for s in listed),
            fact_in_quote=question.answerable and any(holds(s["quote"], question.answer) for s in listed),
            fact_stated=question.answerable and holds(final.answer, question.answer),
            model_stated=question.answerable and holds(model_answer, question.answer),
            invented_unflagged=sorted(set(unflagged)), first_token_s=first, seconds=round(seconds, 2),
            answerable=question.answerable, paraphrase=question.paraphrase,
        ))
    if progress:
        progress(len(questions), len(questions), "done")
    return report
