"""Datasets for training: the shared formats (chatapp.datasets) plus what training adds: token
summaries with the base model's tokenizer, and `datasets.Dataset`s in TRL's formats.

Training uses TRL's conversational prompt-completion format, so the base model's chat template renders
it and the loss covers the response only (SmolLM2's template has no {% generation %} markers, which
TRL's assistant_only_loss would need); preference pairs use TRL's conversational preference format.
"""
from __future__ import annotations

from dataclasses import dataclass

from chatapp.datasets import (  # noqa: F401
    DatasetError,
    Example,
    Preference,
    fill_placeholders,
    read_preferences,
    read_records,
    split,
    to_example,
    to_preference,
)


@dataclass
class Summary:
    examples: int
    tokens: int
    response_tokens: int
    truncated: int
    max_length: int | None
    longest: int

    def __str__(self) -> str:
        limit = f" at max_length {self.max_length}" if self.max_length else ""
        return (f"dataset: {self.examples} examples, {self.tokens} tokens ({self.response_tokens} in responses), "
                f"longest {self.longest}, {self.truncated} truncated{limit}")


def summarize(examples: list[Example], tokenizer, max_length: int | None) -> Summary:
    """Token counts with the base model's chat template, as TRL will tokenize them."""
    total = responses = truncated = longest = 0
    for example in examples:
        prompt_ids = tokenizer.apply_chat_template(example.prompt, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"]
        full_ids = tokenizer.apply_chat_template(example.prompt + example.to_prompt_completion()["completion"],
                                                 tokenize=True, return_dict=True)["input_ids"]
        total += min(len(full_ids), max_length or len(full_ids))
        responses += max(0, min(len(full_ids), max_length or len(full_ids)) - len(prompt_ids))
        truncated += bool(max_length and len(full_ids) > max_length)
        longest = max(longest, len(full_ids))
    return Summary(len(examples), total, responses, truncated, max_length, longest)


def to_dataset(examples: list[Example]):
    """A `datasets.Dataset` in TRL's conversational prompt-completion format."""
    from datasets import Dataset

    return Dataset.from_list([e.to_prompt_completion() for e in examples])


def to_preference_dataset(pairs: list[Preference]):
    """A `datasets.Dataset` in TRL's conversational preference format (explicit prompt)."""
    from datasets import Dataset

    return Dataset.from_list([p.to_trl() for p in pairs])
