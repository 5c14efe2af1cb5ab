"""Reading evaluation inputs: text-per-line files and instruction datasets, with line numbers in errors.

Dataset records are read by the shared format module's `to_example` (chatapp.datasets: Alpaca, chat
`messages`, ShareGPT `conversations`), which training reads with too, so a record is prompted at
evaluation exactly as it was in training; this module only adds line numbers (the shared reader names
the record, not the line of a JSON array).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from chatapp.adapters import CARD_FILE, read_card
from chatapp.datasets import DatasetError, fill_placeholders, split, to_example


@dataclass
class Example:
    messages: list[dict]  # the conversation up to the answer; the model continues it
    reference: str
    line: int  # where the record starts in its file, for error messages and the predictions file

    @property
    def prompt(self) -> str:
        return self.messages[-1]["content"]


def read_lines(path: str | Path) -> list[str]:
    """One text per line (no trailing newline kept). Errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    lines = []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        try:
            lines.append(raw.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}:{number}: not UTF-8 text (byte {error.start})") from None
        if "\x00" in lines[-1]:
            raise ValueError(f"{path}:{number}: contains a NUL byte; expected plain text")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline does not start another text
    return lines


def _json_records(path: Path) -> list[tuple[int, object]]:
    """(line, record) pairs from a JSON array or JSON Lines file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text") from None
    stripped = text.lstrip()
    if not stripped:
        raise ValueError(f"{path}:1: the file is empty")
    if stripped.startswith("["):
        # Walk the array element by element so each record knows the line it starts on.
        decoder = json.JSONDecoder()
        records, position = [], text.index("[") + 1
        while True:
            while position < len(text) and text[position] in " \t\r\n,":
                position += 1
            if position >= len(text):
                raise ValueError(f"{path}:{text.count(chr(10)) + 1}: the JSON array is not closed")
            if text[position] == "]":
                return records
            try:
                record, end = decoder.raw_decode(text, position)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
            records.append((text.count("\n", 0, position) + 1, record))
            position = end
    records = []
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    return records


def read_examples(path: str | Path, variables: dict[str, str] | None = None) -> list[Example]:
    """Every record as an Example, read exactly as training reads it (the shared `to_example`),
    with {{key}} placeholders filled from `variables`. Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    examples = []
    for line, record in _json_records(path):
        try:
            example = to_example(fill_placeholders(record, variables or {}))
        except DatasetError as error:
            raise ValueError(f"{path}:{line}: {error}") from None
        examples.append(Example(example.prompt, example.response, line))
    if not examples:
        raise ValueError(f"{path}: no records")
    return examples


def held_out_examples(adapter_dir: str | Path) -> tuple[Path, list[Example]]:
    """The records an adapter did not train on: its card names the data file, placeholders, test
    share and seed, and training's own `split` is replayed on them."""
    card_path = Path(adapter_dir) / CARD_FILE
    card = read_card(adapter_dir)
    if card is None:
        raise FileNotFoundError(f"{card_path}: no adapter card (was the adapter made with python -m finetune?)")
    try:
        data = card["data"]
        path, test_size, seed = Path(data["file"]), float(data["test_size"]), int(card["hyperparameters"]["seed"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{card_path}: the card lacks the data split ({error})") from None
    examples = read_examples(path, data.get("template_vars") or {})
    held_out = split(examples, test_size, seed)[1]
    if not held_out:
        raise ValueError(f"{card_path}: the adapter was trained with test_size 0, so nothing was held out")
    return path, held_out
