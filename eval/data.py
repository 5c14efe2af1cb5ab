"""Reading evaluation inputs: text-per-line files and instruction datasets, with line numbers in errors.

The dataset formats are finetune's: Alpaca (`instruction`, optional `input`, `output`), chat
`messages` (role/content; the last assistant turn is the reference) and ShareGPT `conversations`
(from/value). Files are a JSON array (.json) or one object a line (.jsonl).
TODO(lead): unify with finetune's dataset loader once it exists, so both read records identically.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "chatgpt": "assistant", "bard": "assistant"}


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


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")
    return value


def _example(record, line: int) -> Example:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if "instruction" in record or "output" in record:
        instruction = _text(record.get("instruction"), "'instruction'").strip()
        extra = _text(record.get("input") or "", "'input'").strip()
        if not instruction:
            raise ValueError("'instruction' is empty")
        messages = [{"role": "system", "content": _text(record["system"], "'system'")}] if record.get("system") else []
        messages.append({"role": "user", "content": f"{instruction}\n\n{extra}" if extra else instruction})
        return Example(messages, _text(record.get("output"), "'output'"), line)
    if "messages" in record or "conversations" in record:
        key = "messages" if "messages" in record else "conversations"
        turns = record[key]
        if not isinstance(turns, list) or not turns:
            raise ValueError(f"'{key}' must be a non-empty list")
        messages = []
        for turn in turns:
            if not isinstance(turn, dict):
                raise ValueError(f"each item of '{key}' must be an object")
            if key == "messages":
                role, content = turn.get("role"), turn.get("content")
            else:
                role, content = SHAREGPT_ROLES.get(turn.get("from")), turn.get("value")
            if role not in ("system", "user", "assistant"):
                raise ValueError(f"unknown role {turn.get('role', turn.get('from'))!r} in '{key}'")
            messages.append({"role": role, "content": _text(content, "message content")})
        if messages[-1]["role"] != "assistant" or len(messages) < 2 or messages[-2]["role"] != "user":
            raise ValueError(f"'{key}' must end with a user turn followed by the reference assistant turn")
        return Example(messages[:-1], messages[-1]["content"], line)
    raise ValueError("unknown record format: expected instruction/output, messages or conversations")


def read_examples(path: str | Path) -> list[Example]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    examples = []
    for line, record in _json_records(path):
        try:
            examples.append(_example(record, line))
        except ValueError as error:
            raise ValueError(f"{path}:{line}: {error}") from None
    if not examples:
        raise ValueError(f"{path}: no records")
    return examples
