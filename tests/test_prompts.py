"""Prompts and reply parsing: the formats, and that the real embedded model follows them on real passages."""
from __future__ import annotations

import pytest
from pypdf import PdfReader

from chatapp import prompts
from chatapp.generation import GenerationSettings
from chatapp.model import ModelRegistry
from chatapp.rag import repeating
from chatapp.settings import Settings


def test_context_block_numbers_passages_from_one_and_flattens_whitespace():
    block = prompts.context_block(["first\n  passage", "second"])
    assert block == "[1] first passage\n\n[2] second"


@pytest.mark.parametrize("style, shots", [("cot", 1), ("direct", 0), ("one-shot", 1), ("few-shot", 3)])
def test_each_style_shows_its_number_of_worked_examples(style, shots):
    messages = prompts.answer_messages("How many warmup steps?", ["We used warmup_steps = 4000."], style)
    assert messages[0]["role"] == "system"
    assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * shots + ["user"]
    assert messages[-1]["content"].endswith("Question: How many warmup steps?")
    assert "[1] We used warmup_steps = 4000." in messages[-1]["content"]
    cot_format = prompts.FINAL_MARKER in messages[0]["content"]
    assert cot_format == (style == "cot")
    if shots:  # the demonstrations show the format the parser expects
        assert (prompts.FINAL_MARKER in messages[2]["content"]) == (style == "cot")
        assert "[" in messages[2]["content"]


def test_unknown_style_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="cot, direct, one-shot, few-shot"):
        prompts.answer_messages("q", ["p"], "socratic")


@pytest.mark.parametrize(
    "reply, reasoning, answer",
    [
        ("Passage [2] gives 4000.\nFinal answer: 4000 steps [2].", "Passage [2] gives 4000.", "4000 steps [2]."),
        # what SmolLM2-135M mostly does: the marker first, no reasoning
        ("Final answer: The encoder has 6 layers.", "", "The encoder has 6 layers."),
        ("The optimizer used was Adam.", "", "The optimizer used was Adam."),  # no marker: all answer, nothing hidden
        ("It is Adam, see [1].\nfinal answer -", "", "It is Adam, see [1]."),  # marker with nothing after
        ("Reasoning: a.\nFINAL ANSWER: b\nFinal answer: c", "a.\nFINAL ANSWER: b", "c"),  # the last marker wins
        ("", "", ""),
    ],
)
def test_parse_reply_is_robust_to_a_small_model_bending_the_format(reply, reasoning, answer):
    parsed = prompts.parse_reply(reply, "cot")
    assert (parsed.reasoning, parsed.answer) == (reasoning, answer)


def test_non_cot_replies_are_all_answer():
    assert prompts.parse_reply("Answer: Adam. Final answer: Adam", "direct").answer == "Adam. Final answer: Adam"


def test_cited_numbers_in_order_within_range():
    assert prompts.cited_numbers("See [2] and [1, 3], again [2]; not [7] nor [0].", 3) == [2, 1, 3]
    assert prompts.cited_numbers("no citations", 3) == []


@pytest.mark.parametrize("text", ["hi", "Hello!", "thanks a lot", "Good morning.", "how are you today?", "bye",
                                  "hello there", "Hey there!", "thanks, that helps!", "good morning everyone",
                                  # two pleasantries in one line went to the documents and came back with sources
                                  "hey, how are you?", "ok bye, thanks for the help", "Good morning! How's it going?",
                                  "great, thanks!", "Thank you so much, that was helpful.", "nice to meet you",
                                  "hi there, who are you?", "bye for now, see you tomorrow",
                                  # well-wishes, met in bench/fresh.jsonl, came back with passages as sources
                                  "Good evening! Hope you're doing well.", "cheers, that was really helpful",
                                  "good morning, how are things?", "thanks a lot, have a nice day!"])
def test_small_talk_is_recognised(text):
    assert prompts.is_small_talk(text)


@pytest.mark.parametrize("text", ["hi, how many warmup steps were used?", "What optimizer was used?", "Thanks for the BLEU score?",
                                  "hello there, which optimizer?", "thanks! and how many layers?",
                                  "hey, how are you computing the BLEU score?", "How are you supposed to set the learning rate?",
                                  "ok, what was the dropout rate?", "Nice. Which dataset was used?", "",
                                  "hi, how is the weekend schedule?", "hello, how are the results?"])
def test_questions_are_not_small_talk(text):
    assert not prompts.is_small_talk(text)


def test_condense_prompt_carries_recent_turns_and_the_question():
    history = [{"role": "user", "content": "What optimizer was used?"}, {"role": "assistant", "content": "Adam [1]."}]
    messages = prompts.condense_messages("What were its betas?", history)
    assert "User: What optimizer was used?" in messages[-1]["content"]
    assert messages[-1]["content"].endswith("Last question: What were its betas?")


def test_looping_replies_are_cut_at_the_first_repeat():
    # replies seen from SmolLM2-135M under greedy decoding
    loop = "The number of warmup steps used is 1.\n\nThe number of warmup steps used is 1.\n\nThe number"
    assert loop[: repeating(loop)].strip() == "The number of warmup steps used is 1."
    digits = "Final answer: It took 2014-08-23 12:30:52.23.12.12.12.12.12.12.12"
    assert digits[: repeating(digits)].endswith("52.23.12")
    assert repeating("One sentence. Another one. And a third") is None
    # the token limit fell just after a repeat: nothing grows after it, so the finished reply is cut there too
    ended = "It is not about gun laws. The passage quotes a speech. The passage quotes a speech."
    assert repeating(ended) is None
    assert ended[: repeating(ended, finished=True)].strip() == "It is not about gun laws. The passage quotes a speech."


def test_a_long_clause_looping_without_a_full_stop_is_cut():
    """bench/fresh.jsonl: the answer ran to the token limit repeating a clause of 69 characters."""
    clause = "The extra high-confidence corpora were pulled in about 17M sentences "
    reply = clause * 3 + "The extra high-confidence corpora"
    assert reply[: repeating(reply, finished=True)].strip() == clause.strip()
    streamed = [reply[:end] for end in range(len(reply) + 1) if repeating(reply[:end]) is not None]
    assert streamed and streamed[0][: repeating(streamed[0])].strip() == clause.strip()  # caught while streaming
    assert len(streamed[0]) <= len(clause) * 3  # by the end of the third copy
    table = "| a | b |\n| 1 | 2 |\n| 3 | 4 |\nThe first column counts the layers of the encoder stack."
    assert repeating(table, finished=True) is None


# --- the real model on real passages ---------------------------------------------------------


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry(Settings.from_env()).load()


@pytest.fixture(scope="module")
def optimizer_page(corpus) -> str:
    """Page 7 of the paper: section 5.3, the optimizer (one real passage, as retrieval would give it)."""
    text = PdfReader(corpus / "pdf" / "attention-is-all-you-need.pdf").pages[6].extract_text()
    start = text.index("5.3 Optimizer")
    return text[start : start + 700]


@pytest.mark.slow
@pytest.mark.parametrize("style", ["cot", "few-shot"])
def test_the_embedded_model_answers_from_the_passage(registry, optimizer_page, style):
    messages = prompts.answer_messages("What optimizer was used?", [optimizer_page], style)
    reply = registry.generate(messages, "base", GenerationSettings(max_new_tokens=48))
    parsed = prompts.parse_reply(reply, style)
    assert "Adam" in parsed.answer
    assert prompts.FINAL_MARKER.lower() not in parsed.answer.lower()


def test_only_chain_of_thought_starts_the_reply_and_requires_a_final_answer():
    assert prompts.reply_prefix("cot") == "Passage [" and prompts.required_text("cot") == prompts.FINAL_MARKER
    for style in ("direct", "one-shot", "few-shot"):
        assert prompts.reply_prefix(style) == "" and prompts.required_text(style) is None
