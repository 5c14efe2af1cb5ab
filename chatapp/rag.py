"""Grounded answers: retrieve passages, prompt the model, stream the reply, map citations to sources.

`answer(...)` yields partial `Answer`s as the model streams; the last one has `done=True`.
`ask(...)` is the blocking form.

Decisions worth knowing:
- Relevance is the store's cosine score against `settings.score_threshold`, or one sentence holding
  nearly all of the question's words (see covers()). When neither holds, the model is not asked at all:
  the reply says the documents don't cover the question and cites nothing (a 135M model asked anyway
  answers from memory, see tests/test_chat_rag.py).
- A question about a name that no stored chunk holds ("Mount Everest", asked of a store whose Himalayan
  travel pages come close) gets the same reply, naming it: the 135M model asked anyway invented a figure,
  and no cosine or word-coverage threshold told such a question apart from answerable paraphrases.
- Small talk ("hi", "thanks") skips retrieval and gets a short, source-free reply.
- Retrieval asks the store for `settings.candidates` passages (20) and keeps the `top_k` with the best
  evidence (chatapp/evidence.py): the sentence that answers a question is often in a passage the dense
  score ranks 5th to 15th.
- Sources listed under an answer are chosen by evidence, not by the model's [n] markers: the passage
  with the best evidence always, and the others that hold what the answer states. Each carries its
  quote, the sentence or two that carry the answer.
- Figures and names of the answer that no passage holds are listed as `unsupported`. Such an answer,
  or one that leaves out the figure the question asks for, is replaced by the quote itself
  (`settings.extractive_fallback`), and the model's wording is kept as `model_answer`.
- An empty store says so and points to the Documents tab; a question asked while a file is still being
  stored waits for it, and says so.
- A follow-up is rewritten into a standalone question from the conversation before retrieval.
"""
from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from chatapp import evidence, prompts
from chatapp.generation import GenerationSettings
from chatapp.model import BASE
from chatapp.settings import Settings

NO_CONTEXT_REPLY = "The documents don't cover this question, so I can't answer it from them."
EMPTY_STORE_REPLY = ("No documents are stored yet. Add some in the Documents tab (or with "
                     "`python -m loaders ingest PATH`), then ask again.")
CONDENSE_GENERATION = GenerationSettings(max_new_tokens=40)
SMALL_TALK_TOKENS = 64  # a pleasantry gets a sentence or two; a runaway reply stops here
KEYWORD_COVER, KEYWORD_COVER_MARGIN = 0.75, 0.2  # see covers()
INGEST_GRACE_S = 3.0  # a file dropped in the Documents tab reaches the server a moment after the drop
INGEST_WAIT_S = 600.0


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
    where: str = ""  # the loader's words for any other place: "Sheet1, row 12", "slide 3", a heading path
    sha256: str = ""  # of the source's bytes: finds the stored copy of a PDF
    attachment: str = ""  # the e-mail attachment the passage was read from
    attachment_page: int | None = None  # its page, for an attached PDF
    quote: str = ""  # the sentence or two of `text` that carry the answer
    quote_spans: list[tuple[int, int]] = field(default_factory=list)  # where the quote is in `text`

    @property
    def location(self) -> str:
        """"p. 7", "12:05", "Sheet1, row 12", "slide 3" or "" — where in the source the passage is."""
        if self.page is not None:
            return f"p. {self.page}"
        if self.start is not None:
            return timestamp(self.start)
        return self.where

    def to_json(self) -> dict:
        record = {"source": self.source, "page": self.page, "text": self.text, "score": round(self.score, 4),
                  "quote": self.quote}
        if self.start is not None:
            record["start"] = self.start
            record["timestamp"] = timestamp(self.start)
        if self.where:
            record["location"] = self.where
        return record


@dataclass
class Answer:
    question: str
    standalone_question: str = ""
    answer: str = ""
    reasoning: str = ""
    sources: list[Source] = field(default_factory=list)  # listed under the answer, best evidence first
    retrieved: list[Source] = field(default_factory=list)  # everything the prompt was given
    unsupported: list[str] = field(default_factory=list)  # figures/names the model stated that no passage holds
    model_answer: str = ""  # the model's own answer, when it was replaced by the evidence quote
    unmentioned: list[str] = field(default_factory=list)  # names asked about that no stored chunk holds (no_context)
    status: str = "answered"  # answered | no_context | small_talk | empty_store | waiting
    raw: str = ""  # the model's reply as produced
    done: bool = False

    @property
    def text(self) -> str:
        """The answer as shown so far (reasoning excluded)."""
        return self.answer

    @property
    def evidence(self) -> list[dict]:
        return [{"source": s.source, "page": s.page, "quote": s.quote, **({"location": s.where} if s.where else {})}
                for s in self.sources if s.quote]

    def to_json(self) -> dict:
        record = {
            "answer": self.answer,
            "reasoning": self.reasoning,
            "sources": [s.to_json() for s in self.sources],
            "evidence": self.evidence,
            "unsupported": list(self.unsupported),
            "status": self.status,
            "standalone_question": self.standalone_question,
        }
        if self.model_answer:
            record["model_answer"] = self.model_answer
        if self.unmentioned:
            record["unmentioned"] = list(self.unmentioned)
        return record


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


def _source(doc, score: float, number: int = 0) -> Source:
    meta = doc.metadata or {}
    return Source(number=number, source=str(meta.get("source", "?")), text=doc.page_content, score=score,
                  title=str(meta.get("title") or ""), kind=str(meta.get("kind") or ""),
                  page=_as_int(meta.get("page")), start=_as_float(meta.get("start")), where=str(meta.get("location") or ""),
                  sha256=str(meta.get("sha256") or ""), attachment=str(meta.get("attachment") or ""),
                  attachment_page=_as_int(meta.get("attachment_page")))


def retrieve(store, query: str | list[str], k: int, threshold: float | None = None,
             hybrid: bool | None = None) -> list[Source]:
    """The k best passages (hybrid search, see DocumentStore.search), best first and numbered so; with a
    `threshold`, only those whose cosine reaches it.

    Several queries (a follow-up as asked and as rewritten) are merged by reciprocal rank fusion, as
    LangChain's EnsembleRetriever does, so each query's best passages make the top k (pooling by cosine
    let the as-asked "What values did it use for beta1 and beta2?" push the optimizer page out); ties go
    to the earlier query. A passage shows its best score.
    """
    fused: dict[tuple, list] = {}  # key -> [doc, best score, fused rank score, first query's position]
    queries = list(dict.fromkeys([query] if isinstance(query, str) else query))
    for position, text in enumerate(queries):
        hits = [(doc, float(score)) for doc, score in store.search(text, k, hybrid=hybrid)
                if threshold is None or float(score) >= threshold]
        for rank, (doc, score) in enumerate(hits, 1):  # in the store's order: the hybrid fusion's
            key = (str((doc.metadata or {}).get("source")), (doc.metadata or {}).get("page"), doc.page_content)
            entry = fused.setdefault(key, [doc, score, 0.0, position])
            entry[1] = max(entry[1], score)
            entry[2] += 1 / (60 + rank)
    ranked = sorted(fused.values(), key=lambda e: (-e[2], e[3], -e[1]))[:k]
    return [_source(doc, score, number) for number, (doc, score, _, _) in enumerate(ranked, 1)]


def covers(question: str, candidates: list[Source], threshold: float) -> bool:
    """Whether the documents cover the question: a passage's cosine reaches the threshold, or one sentence
    holds nearly all of the question's words while its passage comes close (BM25 finds "label smoothing"
    at cosine 0.12-0.29). No off-topic question of bench/questions.jsonl passes the second test, whose
    sentences held at most 61% of their words (at cosines 0.23-0.28)."""
    if not candidates:
        return False
    if max(c.score for c in candidates) >= threshold:
        return True
    close = [c.text for c in candidates if c.score >= threshold - KEYWORD_COVER_MARGIN]
    return bool(close) and evidence.question_coverage(question, close) >= KEYWORD_COVER


def unmentioned_names(question: str, candidates: list[Source], store) -> list[str]:
    """The names the question asks about that neither the candidates nor any stored chunk holds (see
    evidence.unmentioned_names). A source may be named as people call it: "the NYT article" is nytimes-1.html,
    "the Verge" theverge.html, so the candidates' file names and titles hold a name as a substring too."""
    named = " ".join(f"{c.source} {c.title}" for c in candidates).lower()
    return evidence.unmentioned_names(question, [f"{c.title}\n{c.text}" for c in candidates],
                                      lambda name: name.lower() in named or store.mentions(name))


def choose_passages(question: str, candidates: list[Source], k: int) -> list[Source]:
    """The k candidates with the best evidence for the question, numbered for the prompt with the best
    last, right before the question: the 135M model leans on what it read most recently (on the shared
    PDF this turned "3 layers" into the right "6")."""
    order = evidence.rank_passages(question, [c.text for c in candidates], priors(question, candidates))
    chosen = [candidates[i] for i in order[:k]][::-1]
    return [replace(source, number=number) for number, source in enumerate(chosen, 1)]


def priors(question: str, passages: list[Source]) -> list[float]:
    """The passages' scores as the evidence's prior, a kind the question names counted (evidence.medium_priors)."""
    return evidence.medium_priors(question, [p.score for p in passages], [p.kind for p in passages])


def cited_sources(text: str, retrieved: list[Source]) -> list[Source]:
    """The passages `text` cites as [n], in order of first citation."""
    by_number = {s.number: s for s in retrieved}
    return [by_number[n] for n in prompts.cited_numbers(text, len(retrieved)) if n in by_number]


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


def repeating(text: str, finished: bool = False) -> int | None:
    """Where a looping reply should be cut, or None.

    Greedy decoding of a small model often loops ("The answer is 1. The answer is 1. ..."); cutting
    at the first repeated sentence, at a short pattern repeated five times, or at a long one (a clause with no
    full stop) repeated three times, ends the reply cleanly. While the reply streams its last sentence may still
    grow, and a long loop is looked for at its end only; once `finished`, anywhere.
    """
    loop = re.search(r"(.{2,40}?)\1{4,}", text, flags=re.S)
    cut = loop.start() + len(loop.group(1)) if loop else None
    # "…pulled in about 17M sentences The extra high-confidence corpora were pulled in about 17M sentences The…"
    # (bench/fresh.jsonl): the search over the whole reply costs ~15 ms, too much for every streamed token.
    if finished:
        long_loop = _LONG_LOOP.search(text)
        long_cut = long_loop.start() + len(long_loop.group(1)) if long_loop else None
    else:
        long_cut = _tail_loop(text)
    if long_cut is not None:
        cut = long_cut if cut is None else min(cut, long_cut)
    seen: set[str] = set()
    position = 0
    pieces = _SENTENCE_END.split(text)
    for piece in pieces if finished else pieces[:-1]:
        start = text.find(piece, position)
        position = start + len(piece)
        key = " ".join(piece.lower().split())
        if len(key) >= 12 and key in seen:
            cut = start if cut is None else min(cut, start)
            break
        seen.add(key)
    return cut


_LONG_LOOP = re.compile(r"(.{20,200}?)\1{2,}", re.S)


def _tail_loop(text: str, shortest: int = 20, longest: int = 200) -> int | None:
    """Where the second copy starts of a unit of `shortest`..`longest` characters that ends `text` three
    times over, or None."""
    n = len(text)
    for size in range(shortest, min(longest, n // 3) + 1):
        tail = text[n - size:]
        if text[n - 2 * size:n - size] == tail and text[n - 3 * size:n - 2 * size] == tail:
            start = n - 3 * size
            while start > 0 and text[start - 1] == text[start - 1 + size]:
                start -= 1  # the loop began before its first whole copy
            return start + size
    return None


def _wait_for_documents(store, question: str) -> Iterator[Answer]:
    """Yields a 'waiting' Answer while sources are still being stored; returns once none are."""
    deadline = time.monotonic() + INGEST_GRACE_S
    while not store.ingesting() and store.is_empty() and time.monotonic() < deadline:
        time.sleep(0.2)  # an upload that was just dropped may not have reached the store yet
    pending = store.ingesting()
    if pending:
        names = ", ".join(sorted(pending))
        yield Answer(question, status="waiting",
                     answer=f"Still storing {names}; the answer follows as soon as it is stored.")
        store.wait_until_stored(INGEST_WAIT_S)


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
        from loaders.store import (
            get_store,  # here, not at the top: loaders imports chatapp's settings
        )

        store = get_store(settings)
    generation = generation or GenerationSettings()
    turns = text_history(history)

    if prompts.is_small_talk(question):
        result = Answer(question, standalone_question=question, status="small_talk")
        brief = replace(generation, max_new_tokens=min(generation.max_new_tokens, SMALL_TALK_TOKENS))
        yield from _stream_into(result, registry.stream(prompts.small_talk_messages(question, turns), variant, brief), "direct")
        return

    yield from _wait_for_documents(store, question)
    if store.is_empty():
        yield Answer(question, standalone_question=question, status="empty_store", answer=EMPTY_STORE_REPLY,
                     raw=EMPTY_STORE_REPLY, done=True)
        return

    searched = standalone_question(question, turns, registry) if turns else question
    # Searched as asked too, so a question that already stood alone keeps its own passages when the small
    # model's rewrite drags the previous topic in. The model is given the rewrite only when it is one
    # question: shown a statement, or two questions, it answers those instead.
    query = searched if searched.count("?") == 1 and searched.rstrip().endswith("?") else question
    candidates = retrieve(store, [question, searched], max(settings.candidates, k or settings.top_k),
                          hybrid=settings.hybrid)
    unmentioned = []
    if not covers(query, candidates, settings.score_threshold):
        candidates = []  # nothing relevant enough: the documents don't cover the question
    elif settings.name_check:  # a name it asks about that no stored chunk holds, however close the other words come
        unmentioned = unmentioned_names(query, candidates, store)
        candidates = [] if unmentioned else candidates
    retrieved = choose_passages(query, candidates, k or settings.top_k)
    result = Answer(question, standalone_question=searched, retrieved=retrieved, unmentioned=unmentioned)
    if not retrieved:
        reply = (f"The documents don't mention {' or '.join(unmentioned)}, so I can't answer this from them."
                 if unmentioned else NO_CONTEXT_REPLY)
        result.status, result.answer, result.raw, result.done = "no_context", reply, reply, True
        yield result
        return
    embed = _memo(store.embeddings.embed_documents)  # the sentences are embedded once, for both uses below
    focus = None
    if settings.evidence_in_prompt:
        best = evidence.best_sentence(query, [s.text for s in retrieved], priors(query, retrieved), embed)
        if best is not None:
            index, (start, end) = best
            focus = (retrieved[index].number, retrieved[index].text[start:end])
    messages = prompts.answer_messages(query, [s.text for s in retrieved], style, focus=focus)
    pieces = registry.stream(messages, variant, generation, reply_prefix=prompts.reply_prefix(style),
                             required=prompts.required_text(style))
    for partial in _stream_into(result, pieces, style):
        if partial.done:
            _ground(partial, query, settings, embed)
        yield partial


def _stream_into(result: Answer, pieces: Iterator[str], style: str) -> Iterator[Answer]:
    try:
        for piece in pieces:
            result.raw += piece
            cut = repeating(result.raw)
            if cut is not None:
                result.raw = result.raw[:cut].rstrip()
                break
            reciting = _fill(result, style)
            yield replace(result)
            if reciting:  # the rest would be cut anyway: stop the model rather than wait for its token limit
                break
    finally:
        pieces.close()  # stops the generation thread when we stop early or the caller goes away
    # A reply whose token limit fell just after a repeat ended with that repeat: seen walking the app, the
    # same sentence twice at the end of an answer.
    cut = repeating(result.raw, finished=True)
    if cut is not None:
        result.raw = result.raw[:cut].rstrip()
    _fill(result, style)
    result.done = True
    yield result


def _fill(result: Answer, style: str) -> bool:
    """Reasoning and answer from the reply so far; True once the answer has turned into a passage recited."""
    parsed = prompts.parse_reply(result.raw, style)
    answer = prompts.clean_answer(parsed.answer)
    result.reasoning = parsed.reasoning
    result.answer = prompts.without_copied_passage(answer, [s.text for s in result.retrieved])
    return len(result.answer) < len(answer)


def _memo(embed):
    """`embed` that embeds each text once."""
    seen: dict[str, list[float]] = {}

    def cached(texts: list[str]) -> list[list[float]]:
        missing = list(dict.fromkeys(t for t in texts if t not in seen))
        if missing:
            seen.update(zip(missing, embed(missing)))
        return [seen[t] for t in texts]

    return cached


def _ground(result: Answer, question: str, settings: Settings, embed=None) -> None:
    """List the sources that support the finished answer, with their quotes, and flag what none holds."""
    passages = result.retrieved
    passage_priors = priors(question, passages)
    result.answer = evidence.without_strays(question, result.answer, [s.text for s in passages], passage_priors)
    cited = [passages.index(s) for s in cited_sources(result.raw, passages)]
    found = evidence.support(question, result.answer, [s.text for s in passages], passage_priors,
                             cited=cited, embed=embed)
    result.sources = []
    for index in found.listed:
        spans = found.quotes.get(index, [])
        source = passages[index]
        result.sources.append(replace(source, quote=evidence.quote_text(source.text, spans), quote_spans=spans))
    result.unsupported = found.unsupported
    best = result.sources[found.listed.index(found.fallback)] if found.fallback in found.listed else None
    if settings.extractive_fallback and not found.supported and best is not None and best.quote:
        # The answer is replaced by the question's best evidence, which then leads the sources.
        result.sources = [best] + [s for s in result.sources if s is not best]
        where = f", {best.location}" if best.location else ""
        result.model_answer = result.answer
        result.answer = f"From {best.source}{where}: \u201c{best.quote}\u201d"


def ask(question: str, history: Iterable[dict] | None = None, **kwargs) -> Answer:
    """Blocking `answer`: the finished Answer."""
    final = None
    for final in answer(question, history, **kwargs):
        pass
    return final
