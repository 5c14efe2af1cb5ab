"""Prompts for grounded answers, and reading the model's reply back.

The embedded model is tiny (SmolLM2-135M): it follows a format it has *seen* far better than one it
is told about, so every style except "direct" shows worked examples as earlier chat turns, and the
reply parser never trusts the format to be there.

Styles:
- "cot": chain-of-thought. One worked example whose reply is reasoning, then a line
  "Final answer: ...". The reasoning is shown folded away in the UI.
- "direct": zero-shot, the instruction and the passages only.
- "one-shot" / "few-shot": one / three worked examples of a short cited answer.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

STYLES: dict[str, str] = {
    "cot": "Chain-of-thought",
    "direct": "Direct (zero-shot)",
    "one-shot": "One-shot",
    "few-shot": "Few-shot",
}
FINAL_MARKER = "Final answer:"

SYSTEM = (
    "You answer questions using only the numbered passages you are given. "
    "Cite the passage you used with its number in brackets, like [1]. "
    "If the passages do not contain the answer, say that the documents do not cover it."
)
SMALL_TALK_SYSTEM = "You are a friendly assistant for a document question-answering app. Reply briefly."
# Three short exchanges shown before a pleasantry. Without them the 135M model echoed "Hello!", or rambled
# for 12 s about passports and visas after "Good evening! Hope you're doing well." (18 pleasantries: the
# longest reply 81 words and 12.4 s against 25 words and 2.2 s with them).
SMALL_TALK_EXAMPLES = [("hi", "Hi! What would you like to know about your documents?"),
                       ("thanks, that helped", "You're welcome! Ask me anything else about your documents."),
                       ("ok bye", "Goodbye! Come back any time.")]

# Hand-written demonstrations: short, so they cost few prompt tokens, and about unrelated topics,
# so the model cannot copy their facts into a real answer. The right passage is not always [1],
# so the model learns to pick the passage rather than always citing the first one.
EXAMPLES: list[dict] = [
    {
        "passages": [
            "The Eiffel Tower is 330 metres tall and stands in Paris.",
            "Construction of the tower took two years, from 1887 to 1889.",
        ],
        "question": "How long did it take to build the Eiffel Tower?",
        "evidence": 2,
        "reasoning": "Passage [2] says construction ran from 1887 to 1889, which is two years.",
        "answer": "It took two years to build, from 1887 to 1889 [2].",
    },
    {
        "passages": [
            "Honey bees visit up to 5,000 flowers in a single day.",
            "A worker bee lives for about six weeks in summer.",
        ],
        "question": "How many flowers can a honey bee visit in a day?",
        "evidence": 1,
        "reasoning": "Passage [1] gives the number of flowers a honey bee visits in one day: up to 5,000.",
        "answer": "Up to 5,000 flowers a day [1].",
    },
    {
        "passages": [
            "The recipe uses 200 grams of flour and two eggs.",
            "Bake the cake at 180 degrees for 35 minutes.",
        ],
        "question": "At what temperature is the cake baked?",
        "evidence": 2,
        "reasoning": "Passage [2] is about baking and says 180 degrees for 35 minutes.",
        "answer": "At 180 degrees [2].",
    },
]
SHOTS = {"cot": 1, "direct": 0, "one-shot": 1, "few-shot": 3}

CONDENSE_INSTRUCTION = (
    "Rewrite the last question so that it can be understood without the conversation. "
    "Reply with the rewritten question only."
)

# Greetings, thanks and the like: answered conversationally, without retrieval or sources.
# A word list rather than a classifier because the cases are few and a wrong guess is cheap
# (a real question that slips through here still gets a friendly, source-free reply).
_SMALL_TALK = re.compile(
    r"^\s*(hi+|hello+|hey+|hiya|yo|good (morning|afternoon|evening|night)|thanks?( you)?( so much| a lot)?|"
    r"thank you( very much)?|cheers|ok(ay)?|cool|great|nice|bye|goodbye|see you|how are you( doing)?( today)?|"
    r"how'?s it going|how do you do|nice to meet you|got it|sounds good|well done|good job|i see|"
    r"what'?s up|who are you|what are you|what can you do)\s*[!.?]*\s*$",
    re.IGNORECASE,
)


# A greeting or thanks with only friendly filler around it ("hello there", "thanks for the help", "good
# morning everyone") is small talk too: the phrase list alone sent "hello there" to the documents, which
# answered it with two passages as sources.
_GREETING_WORDS = frozenset("hi hii hello hey hiya howdy greetings morning afternoon evening thanks thank thx ty "
                            "cheers bye goodbye".split())
_FRIENDLY_WORDS = _GREETING_WORDS | frozenset(
    "good day night you you're your so much very a lot ok okay cool great nice awesome perfect lovely wonderful "
    "see later now there was for the help all everyone everybody folks friend friends mate buddy again and appreciate it "
    "that that's helps helped helpful to oh ah well dear bot assistant tomorrow soon "
    # well-wishes ("Good evening! Hope you're doing well.", "cheers, that was really helpful"), met in
    # bench/fresh.jsonl: they went to the documents and came back with three passages as sources
    "hope hoping doing are is had have has been really truly fine glad how things going today tonight week weekend".split())


def _friendly(phrase: str) -> bool:
    words = re.findall(r"[a-z']+", phrase.lower())
    return 0 < len(words) <= 8 and set(words) <= _FRIENDLY_WORDS


def is_small_talk(text: str) -> bool:
    """Whether every phrase of `text` is a greeting, thanks or pleasantry: "hey, how are you?" and "ok bye,
    thanks for the help" are, "hi, how many warmup steps were used?" is not (its second phrase asks)."""
    phrases = [p for p in re.split(r"[,.!?;:]+", text or "") if p.strip()]
    talk = [bool(_SMALL_TALK.match(p)) for p in phrases]
    greets = any(talk) or any(set(re.findall(r"[a-z']+", p.lower())) & _GREETING_WORDS for p in phrases)
    return bool(phrases) and greets and all(t or _friendly(p) for t, p in zip(talk, phrases))


def context_block(passages: list[str]) -> str:
    """Numbered passages [1]..[k], the numbers citations refer to."""
    return "\n\n".join(f"[{i}] {' '.join(text.split())}" for i, text in enumerate(passages, 1))


def _user_turn(passages: list[str], question: str, focus: tuple[int, str] | None = None) -> str:
    """The passages, then (when given) the one sentence with the best evidence, then the question. The
    sentence sits last because the 135M model copies from what it read most recently."""
    block = f"Passages:\n{context_block(passages)}\n\n"
    if focus is not None:
        number, sentence = focus
        block += f"Most relevant, from [{number}]: {' '.join(sentence.split())}\n\n"
    return f"{block}Question: {question}"


def _assistant_turn(example: dict, style: str) -> str:
    if style == "cot":
        return f"{example['reasoning']}\n{FINAL_MARKER} {example['answer']}"
    return example["answer"]


def answer_messages(question: str, passages: list[str], style: str = "cot",
                    focus: tuple[int, str] | None = None) -> list[dict]:
    """Chat messages asking for a cited answer to `question` from `passages`; `focus` is (passage number,
    sentence) of the best evidence, shown right before the question (the worked examples show it too)."""
    if style not in STYLES:
        raise ValueError(f"prompt style must be one of {', '.join(STYLES)}, not {style!r}")
    system = SYSTEM
    if style == "cot":
        system += f" First reason step by step about which passage answers the question, then write '{FINAL_MARKER}' and the answer."
    messages = [{"role": "system", "content": system}]
    for example in EXAMPLES[: SHOTS[style]]:
        example_focus = (example["evidence"], example["passages"][example["evidence"] - 1]) if focus else None
        messages.append({"role": "user", "content": _user_turn(example["passages"], example["question"], example_focus)})
        messages.append({"role": "assistant", "content": _assistant_turn(example, style)})
    messages.append({"role": "user", "content": _user_turn(passages, question, focus)})
    return messages


def reply_prefix(style: str) -> str:
    """Text the model's reply starts with. For chain-of-thought it opens the reasoning the way the worked
    example does: left to itself, the 135M model skipped straight to an answer on every corpus question
    tried; started with "Passage [" it names the passage it reads, then gives its final answer.
    (Starting it with a quote of the best evidence instead stated the fact for 4 of 14 tune questions,
    against 5 of 14 with the quote shown before the question: bench/results/answers-*.md.)"""
    return "Passage [" if style == "cot" else ""


def required_text(style: str) -> str | None:
    """Text a reply may not end without: the chain-of-thought answer must come after its reasoning."""
    return FINAL_MARKER if style == "cot" else None


def small_talk_messages(question: str, history: list[dict] | None = None) -> list[dict]:
    shown = [{"role": role, "content": text} for pair in SMALL_TALK_EXAMPLES for role, text in zip(("user", "assistant"), pair)]
    return [{"role": "system", "content": SMALL_TALK_SYSTEM}, *shown, *(history or [])[-4:],
            {"role": "user", "content": question}]


def condense_messages(question: str, history: list[dict]) -> list[dict]:
    """Ask for the follow-up `question` rewritten as a standalone question, from recent turns."""
    lines = [f"{turn['role'].capitalize()}: {' '.join(str(turn['content']).split())[:400]}" for turn in history[-4:]]
    conversation = "\n".join(lines)
    return [
        {"role": "system", "content": CONDENSE_INSTRUCTION},
        {"role": "user", "content": f"Conversation:\n{conversation}\n\nLast question: {question}"},
    ]


@dataclass
class ParsedReply:
    reasoning: str
    answer: str


_MARKER = re.compile(r"final\s+answer\s*[:\-]", re.IGNORECASE)


def parse_reply(text: str, style: str = "cot") -> ParsedReply:
    """Split a reply into reasoning and final answer.

    The small model often skips or bends the format, so: the last "Final answer:" (any case) splits
    reasoning from answer; a reply with no marker is all answer (nothing hidden from the user); a
    marker with nothing after it leaves the reasoning as the answer. Non-CoT styles are all answer.
    """
    text = (text or "").strip()
    if style != "cot":
        return ParsedReply("", _strip_label(text))
    matches = list(_MARKER.finditer(text))
    if not matches:
        return ParsedReply("", _strip_label(text))
    last = matches[-1]
    reasoning, answer = text[: last.start()].strip(), text[last.end():].strip()
    if not answer:
        return ParsedReply("", _strip_label(reasoning))
    return ParsedReply(_strip_label(reasoning), answer)


_LEFTOVER_CITATION = re.compile(r"\s*\[\d{1,2}(?:\s*,\s*\d{1,2})*\]")
_REASONING_LEAD = re.compile(r"^(passage|according to passage|in passage)\s*\[?\d*\]?\s*(says|states|gives|mentions|shows)?\s*(that)?\s*[:,]?\s*",
                             re.IGNORECASE)
# The prompt's own labels: "Question:", "Passages:", and the evidence line's "Most relevant, from [n]:" (the
# model once went on "… every 40 minutes. Most relevant, from: The Transformer (big) is a very good model.").
_ECHOED_QUESTION = re.compile(r"\s*\b(?:Question|Passages?)\s*:|\s*\bMost relevant,? from\b", re.IGNORECASE)
_EXAMPLE_TEXTS = [" ".join(p.lower().split()) for e in EXAMPLES for p in e["passages"]]


def clean_answer(text: str) -> str:
    """The final answer without the reasoning's or the prompt's leftovers: a lead-in such as
    "Passage [3] says", bracketed passage numbers (the sources are listed by evidence, not by [n]), and
    sentences copied from the worked examples ("[1] The Eiffel Tower...")."""
    text = _REASONING_LEAD.sub("", (text or "").strip())
    text = _ECHOED_QUESTION.split(text)[0].strip()  # the model sometimes goes on to write the next prompt
    text = _LEFTOVER_CITATION.sub("", text).strip()
    kept = [part for part in re.split(r"(?<=[.!?])\s+|\n+", text)
            if part.strip() and not any(" ".join(part.lower().split()).rstrip(".") in e for e in _EXAMPLE_TEXTS)]
    text = " ".join(kept).strip()
    return text[:1].upper() + text[1:] if text else ""


# A piece of the answer: a sentence, or the text on either side of a code fence the model opened.
_ANSWER_PIECE = re.compile(r"(?<=[.!?])\s+|\s*```\s*")
COPIED_RUN = 2  # sentences in a row, word for word from one passage: the model is reciting, not answering
MIN_COPIED_CHARS = 20


def without_copied_passage(answer: str, passages: list[str]) -> str:
    """The answer up to where the model starts reciting a passage: after its own first sentence, two
    sentences in a row that one passage holds word for word ("30,000,000 ``` The root of the object,
    `rekt`, contains 300 lists. Each list has…", on and on to the token limit). The passage is listed
    with its quote beside the answer, so nothing is lost; a single copied sentence is kept."""
    flat = [" ".join(p.split()) for p in passages]
    pieces, start = [], 0
    for gap in [*_ANSWER_PIECE.finditer(answer), None]:
        end = gap.start() if gap else len(answer)
        if answer[start:end].strip():
            pieces.append((start, end))
        start = gap.end() if gap else end
    for index in range(1, len(pieces) - COPIED_RUN + 1):
        run = [" ".join(answer[a:b].split()) for a, b in pieces[index:index + COPIED_RUN]]
        if all(len(t) >= MIN_COPIED_CHARS for t in run) and any(all(t in p for t in run) for p in flat):
            return answer[:pieces[index][0]].rstrip(" `\n")
    return answer


def _strip_label(text: str) -> str:
    # The model sometimes echoes labels it saw in the prompt ("Answer:", "Reasoning:").
    return re.sub(r"^(answer|reasoning)\s*:\s*", "", text.strip(), flags=re.IGNORECASE).strip()


_CITATION = re.compile(r"\[(\d{1,2}(?:\s*,\s*\d{1,2})*)\]")


def cited_numbers(text: str, count: int) -> list[int]:
    """Passage numbers cited as [n] or [n, m] in `text`, in order of first use, within 1..count."""
    seen: list[int] = []
    for match in _CITATION.finditer(text or ""):
        for part in match.group(1).split(","):
            number = int(part)
            if 1 <= number <= count and number not in seen:
                seen.append(number)
    return seen
