"""Grounded answers: retrieve passages, prompt the model, stream the reply, map citations to sources.

`answer(...)` yields partial `Answer`s as the model streams; the last one has `done=True`.
`ask(...)` is the blocking form.

Decisions worth knowing:
- Relevance is the store's cosine score against `settings.score_threshold`. When no passage clears
  it, the model is not asked at all: the reply says the documents don't cover the question and
  cites nothing (a 135M model asked anyway answers from memory, see tests/test_chat_rag.py).
- Small talk ("hi", "thanks") skips retrieval and gets a short, source-free reply.
- Sources listed under an answer are the passages it cites as [n]. When it cites none (the
  embedded 135M model rarely does), every passage it was given is listed, because the answer was
  written from exactly those; listing nothing would hide where the answer came from.
- A follow-up is rewritten into a standalone question from the conversation before retrieval.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from chatapp import prompts
from chatapp.model import BASE, GenerationSettings
from chatapp.settings import Settings

NO_CONTEXT_REPLY = "The documents don't cover this question, so I can't answer it from them."
CONDENSE_GENERATION = GenerationSettings(max_new_tokens=40)


@dataclass
class Source:
    number: int  # the [n] the prompt gave this passage
    source: str  # file name or URL
    text: str
    score: float
    title: str = ""
    kind: str = ""
    page: int | None = None  # PDF page, counted from 1
    start: float | None = None  # transcript start, seconds

    @property
    def location(self) -> str:
        """"p. 7", "12:05" or "" — where in the source the passage is."""
        if self.page is not None:
            return f"p. {self.page}"
        if self.start is not None:
            return timestamp(self.start)
        return ""

    def to_json(self) -> dict:
        record = {"source": self.source, "page": self.page, "text": self.text, "score": round(self.score, 4)}
        if self.start is not None:
            record["start"] = self.start
            record["timestamp"] = timestamp(self.start)
        return record


@dataclass
class Answer:
    question: str
    standalone_question: str = ""
    answer: str = ""
    reasoning: str = ""
    sources: list[Source] = field(default_factory=list)  # listed under the answer
    retrieved: list[Source] = field(default_factory=list)  # everything the prompt was given
    status: str = "answered"  # answered | no_context | small_talk
    raw: str = ""  # the model's reply as produced
    done: bool = False

    @property
    def text(self) -> str:
        """The answer as shown so far (reasoning excluded)."""
        return self.answer

    def to_json(self) -> dict:
        return {
            "answer": self.answer,
            "reasoning": self.reasoning,
            "sources": [s.to_json() for s in self.sources],
            "status": self.status,
            "standalone_question": self.standalone_question,
        }


def timestamp(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


def _as_int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _as_float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def retrieve(store, query: str | list[str], k: int, threshold: float) -> list[Source]:
    """Passages scoring at least `threshold`, numbered for the prompt.

    Several queries (a follow-up as asked and as rewritten) are merged by reciprocal rank fusion, as
    LangChain's EnsembleRetriever does, so each query's best passages make the top k (pooling by cosine
    let the as-asked "What values did it use for beta1 and beta2?" push the optimizer page out); ties go
    to the earlier query. A passage shows its best score. The best passage is numbered last so it sits
    right before the question: the 135M model leans on what it read most recently (on the shared PDF
    this turned "3 layers" into the right "6").
    """
    fused: dict[tuple, list] = {}  # key -> [doc, best score, fused rank score, first query's position]
    queries = list(dict.fromkeys([query] if isinstance(query, str) else query))
    for position, text in enumerate(queries):
        hits = [(doc, float(score)) for doc, score in store.search(text, k) if float(score) >= threshold]
        for rank, (doc, score) in enumerate(sorted(hits, key=lambda hit: -hit[1]), 1):
            key = (str((doc.metadata or {}).get("source")), (doc.metadata or {}).get("page"), doc.page_content)
            entry = fused.setdefault(key, [doc, score, 0.0, position])
            entry[1] = max(entry[1], score)
            entry[2] += 1 / (60 + rank)
    ranked = sorted(fused.values(), key=lambda e: (e[2], -e[3], e[1]))
    hits = [(doc, score) for doc, score, _, _ in ranked[-k:]]
    sources = []
    for number, (doc, score) in enumerate(hits, 1):
        meta = doc.metadata or {}
        sources.append(
            Source(
                number=number,
                source=str(meta.get("source", "?")),
                text=doc.page_content,
                score=score,
                title=str(meta.get("title") or ""),
                kind=str(meta.get("kind") or ""),
                page=_as_int(meta.get("page")),
                start=_as_float(meta.get("start")),
            )
        )
    return sources


def cited_sources(text: str, retrieved: list[Source]) -> list[Source]:
    """The passages `text` cites, in order of first citation; all of them when it cites none."""
    numbers = prompts.cited_numbers(text, len(retrieved))
    if not numbers:
        return list(retrieved)
    by_number = {s.number: s for s in retrieved}
    return [by_number[n] for n in numbers]


def text_history(history: Iterable[dict] | None) -> list[dict]:
    """User/assistant turns as plain strings; Gradio's content parts and folded reasoning dropped."""
    turns = []
    for message in history or []:
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant") or (message.get("metadata") or {}).get("title"):
            continue
        if isinstance(content, list):  # Gradio 6 gives [{"type": "text", "text": ...}, ...]
            content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
        if isinstance(content, str) and content.strip():
            turns.append({"role": role, "content": content.strip()})
    return turns


def standalone_question(question: str, history: list[dict], registry) -> str:
    """The follow-up rewritten to stand alone, from recent turns.

    The small model's rewrite is checked: a reply that is empty, runs on, or keeps no word of the
    question falls back to the previous question joined with this one, which still retrieves the
    conversation's topic. The rewrite is not always a question (the 135M model often answers instead);
    it is still searched with, like a hypothetical answer, but only put to the model when it is one.
    """
    previous = [t["content"] for t in history if t["role"] == "user"]
    if not previous:
        return question
    fallback = f"{previous[-1]} {question}"
    rewrite = registry.generate(prompts.condense_messages(question, history), BASE, CONDENSE_GENERATION)
    rewrite = re.sub(r"^(rewritten |standalone )?question\s*:\s*", "", rewrite.strip().splitlines()[0] if rewrite.strip() else "", flags=re.I)
    words = set(re.findall(r"\w{4,}", question.lower()))
    if not rewrite or len(rewrite) > 300 or (words and not words & set(re.findall(r"\w{4,}", rewrite.lower()))):
        return fallback
    return rewrite


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def repeating(text: str) -> int | None:
    """Where a looping reply should be cut, or None.

    Greedy decoding of a small model often loops ("The answer is 1. The answer is 1. ..."); cutting
    at the first repeated sentence, or at a short pattern repeated five times, ends the reply cleanly.
    """
    loop = re.search(r"(.{2,40}?)\1{4,}", text, flags=re.S)
    cut = loop.start() + len(loop.group(1)) if loop else None
    seen: set[str] = set()
    position = 0
    for piece in _SENTENCE_END.split(text)[:-1]:  # the last piece may still be growing
        start = text.find(piece, position)
        position = start + len(piece)
        key = " ".join(piece.lower().split())
        if len(key) >= 12 and key in seen:
            cut = start if cut is None else min(cut, start)
            break
        seen.add(key)
    return cut


def answer(
    question: str,
    history: Iterable[dict] | None = None,
    *,
    registry,
    store=None,
    variant: str = BASE,
    style: str = "cot",
    generation: GenerationSettings | None = None,
    k: int | None = None,
    settings: Settings | None = None,
) -> Iterator[Answer]:
    """Stream a grounded answer: partial `Answer`s (snapshots), the last with `done=True`.

    `store` defaults to `loaders.store.get_store(settings)`. Closing the iterator early stops the model.
    """
    question = (question or "").strip()
    if not question:
        raise ValueError("the question is empty")
    if style not in prompts.STYLES:
        raise ValueError(f"prompt style must be one of {', '.join(prompts.STYLES)}, not {style!r}")
    settings = settings or registry.settings
    if store is None:  # the process's one document store (embedded Qdrant allows one client per folder)
        from loaders.store import get_store

        store = get_store(settings)
    generation = generation or GenerationSettings()
    turns = text_history(history)

    if prompts.is_small_talk(question):
        result = Answer(question, standalone_question=question, status="small_talk")
        yield from _stream_into(result, registry.stream(prompts.small_talk_messages(question, turns), variant, generation), "direct", [])
        return

    searched = standalone_question(question, turns, registry) if turns else question
    # Searched as asked too, so a question that already stood alone keeps its own passages when the small
    # model's rewrite drags the previous topic in. The model is given the rewrite only when it is one
    # question: shown a statement, or two questions, it answers those instead.
    query = searched if searched.count("?") == 1 and searched.rstrip().endswith("?") else question
    retrieved = retrieve(store, [question, searched], k or settings.top_k, settings.score_threshold)
    result = Answer(question, standalone_question=searched, retrieved=retrieved)
    if not retrieved:
        result.status, result.answer, result.raw, result.done = "no_context", NO_CONTEXT_REPLY, NO_CONTEXT_REPLY, True
        yield result
        return
    messages = prompts.answer_messages(query, [s.text for s in retrieved], style)
    pieces = registry.stream(messages, variant, generation, reply_prefix=prompts.reply_prefix(style),
                             required=prompts.required_text(style))
    yield from _stream_into(result, pieces, style, retrieved)


def _stream_into(result: Answer, pieces: Iterator[str], style: str, retrieved: list[Source]) -> Iterator[Answer]:
    try:
        for piece in pieces:
            result.raw += piece
            cut = repeating(result.raw)
            if cut is not None:
                result.raw = result.raw[:cut].rstrip()
                break
            _fill(result, style, retrieved)
            yield replace(result)
    finally:
        pieces.close()  # stops the generation thread when we stop early or the caller goes away
    _fill(result, style, retrieved)
    result.done = True
    yield result


def _fill(result: Answer, style: str, retrieved: list[Source]) -> None:
    parsed = prompts.parse_reply(result.raw, style)
    result.reasoning, result.answer = parsed.reasoning, parsed.answer
    result.sources = cited_sources(result.raw, retrieved) if retrieved else []


def ask(question: str, history: Iterable[dict] | None = None, **kwargs) -> Answer:
    """Blocking `answer`: the finished Answer."""
    final = None
    for final in answer(question, history, **kwargs):
        pass
    return final
