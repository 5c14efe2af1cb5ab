"""The dataset formats that fine-tuning and evaluation both read; their one home.

A leaf: imports nothing of the project, so `finetune` and `eval` both use it without depending on each other.

Instruction records (JSON array or JSONL, one format per record):
  Alpaca      {"instruction", "input"?, "output", "system"?, "history"?: [[q, a], ...]}
  messages    {"messages": [{"role": "system|user|assistant", "content": ...}, ...]}
  ShareGPT    {"conversations": [{"from": "system|human|gpt", "value": ...}, ...]}
Each becomes an `Example`: the conversation before the last answer (`prompt`) and that answer (`response`).

Preference records (TRL's preference format, explicit or implicit prompt):
  {"prompt": TEXT | MESSAGES, "chosen": TEXT | MESSAGES, "rejected": TEXT | MESSAGES}
  {"chosen": MESSAGES, "rejected": MESSAGES}      the shared leading turns are the prompt
Each becomes a `Preference` in TRL's conversational form.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
         "model": "assistant", "bot": "assistant"}


def file_sha256(path: str | Path) -> str:
    """The dataset file's digest: an adapter's card records it, and evaluation compares it to the file it scores."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class DatasetError(ValueError):
    """A record that cannot be trained on; the message names the file, the record and the reason."""


@dataclass
class Example:
    prompt: list[dict]  # chat messages before the answer: optional system, then user/assistant turns ending with user
    response: str

    def to_prompt_completion(self) -> dict:
        return {"prompt": self.prompt, "completion": [{"role": "assistant", "content": self.response}]}

    @property
    def question(self) -> str:
        return self.prompt[-1]["content"]


def records_of(path: str | Path) -> list[tuple[object, str]]:
    """The file's records (a JSON array, {"data": [...]}, or JSONL), each with where it is (" (line 3)"), or
    DatasetError: missing, empty, not JSON, or holding none. Every reader of a record file starts here."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise DatasetError(f"{path}: the file is empty")
    records = _parse(path, text)
    if not records:
        raise DatasetError(f"{path}: no records")
    return records


def read_records(path: str | Path, variables: dict[str, str] | None = None) -> list[Example]:
    """Every record of a dataset file as an Example; the first bad record raises DatasetError."""
    path = Path(path)
    records = records_of(path)
    examples = []
    for number, (record, where) in enumerate(records, start=1):
        try:
            example = to_example(fill_placeholders(record, variables or {}))
        except DatasetError as error:
            raise DatasetError(f"{path}: record {number}{where}: {error}") from None
        examples.append(example)
    return examples


def _parse(path: Path, text: str) -> list[tuple[object, str]]:
    """(record, location note) pairs from a JSON array or JSONL text."""
    stripped = text.lstrip()
    if path.suffix.lower() != ".jsonl" and stripped.startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            # A JSONL file saved as .json parses line by line; anything else is reported as JSON.
            if not stripped.startswith("{"):
                raise DatasetError(f"{path}: not JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
        else:
            if isinstance(data, dict):  # {"data": [...]} or a single record
                lists = [v for v in data.values() if isinstance(v, list) and v and isinstance(v[0], dict)]
                data = lists[0] if len(lists) == 1 and not _format_of(data) else [data]
            if not isinstance(data, list):
                raise DatasetError(f"{path}: expected a JSON array of records, got {type(data).__name__}")
            return [(record, "") for record in data]
    records = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((json.loads(line), f" (line {line_number})"))
        except json.JSONDecodeError as error:
            raise DatasetError(f"{path}: record {len(records) + 1} (line {line_number}): not JSON ({error.msg})") from None
    return records


def fill_placeholders(value, variables: dict[str, str]):
    """Replace {{key}} in every string of a record (--template_vars)."""
    if not variables:
        return value
    if isinstance(value, str):
        for key, replacement in variables.items():
            value = value.replace("{{" + key + "}}", replacement)
        return value
    if isinstance(value, list):
        return [fill_placeholders(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: fill_placeholders(v, variables) for k, v in value.items()}
    return value


def _format_of(record: dict) -> str | None:
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record or "output" in record:
        return "alpaca"
    return None


def to_example(record) -> Example:
    """One record (any accepted format) as an Example; raises DatasetError with the reason."""
    if not isinstance(record, dict):
        raise DatasetError(f"unknown format: expected an object, got {type(record).__name__}")
    kind = _format_of(record)
    if kind == "alpaca":
        return _from_alpaca(record)
    if kind == "messages":
        return _from_turns(record["messages"], "messages", "role", "content")
    if kind == "sharegpt":
        return _from_turns(record["conversations"], "conversations", "from", "value")
    keys = ", ".join(sorted(record)) or "none"
    raise DatasetError(f"unknown format (keys: {keys}); expected instruction/input/output, messages or conversations")


def _text(record: dict, key: str, where: str = "", required: bool = True) -> str:
    if key not in record or record[key] is None:
        if required:
            raise DatasetError(f"missing field '{where}{key}'")
        return ""
    if not isinstance(record[key], str):
        raise DatasetError(f"field '{where}{key}' must be text, got {type(record[key]).__name__}")
    return record[key]


def _from_alpaca(record: dict) -> Example:
    instruction = _text(record, "instruction")
    response = _text(record, "output")
    extra = _text(record, "input", required=False)
    if not instruction.strip():
        raise DatasetError("empty instruction")
    if not response.strip():
        raise DatasetError("empty response")
    prompt: list[dict] = []
    if _text(record, "system", required=False).strip():
        prompt.append({"role": "system", "content": record["system"]})
    for turn in record.get("history") or []:
        if not (isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise DatasetError("field 'history' must be a list of [question, answer] pairs")
        prompt += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    content = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    prompt.append({"role": "user", "content": content})
    return Example(prompt=prompt, response=response)


def _from_turns(turns, field_name: str, role_key: str, content_key: str) -> Example:
    if not isinstance(turns, list) or not turns:
        raise DatasetError(f"field '{field_name}' must be a non-empty list")
    messages = []
    for i, turn in enumerate(turns):
        where = f"{field_name}[{i}]."
        if not isinstance(turn, dict):
            raise DatasetError(f"'{field_name}[{i}]' must be an object")
        role = _text(turn, role_key, where)
        if role not in ROLES:
            raise DatasetError(f"unknown role '{role}' in '{where}{role_key}'")
        messages.append({"role": ROLES[role], "content": _text(turn, content_key, where)})
    if messages[-1]["role"] != "assistant":
        raise DatasetError(f"the last turn of '{field_name}' must be the assistant's answer")
    if not messages[-1]["content"].strip():
        raise DatasetError("empty response")
    if not any(m["role"] == "user" for m in messages[:-1]):
        raise DatasetError(f"'{field_name}' has no user turn before the answer")
    return Example(prompt=messages[:-1], response=messages[-1]["content"])


def split(examples: list, test_size: float, seed: int) -> tuple[list, list]:
    """Reproducible (train, test) split: a seeded shuffle, then the first `test_size` go to test.

    test_size < 1 is a share, >= 1 a count; at least one example stays on each side when asked for."""
    if test_size <= 0:
        return list(examples), []
    count = int(test_size) if test_size >= 1 else max(1, round(len(examples) * test_size))
    if count >= len(examples):
        raise DatasetError(f"test_size {test_size} leaves no training examples out of {len(examples)}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    test = sorted(order[:count])
    train = sorted(order[count:])
    return [examples[i] for i in train], [examples[i] for i in test]


# ---------------------------------------------------------------------------------------------
# Preference pairs


@dataclass
class Preference:
    prompt: list[dict]  # chat messages ending with the user's turn
    chosen: str
    rejected: str

    def to_trl(self) -> dict:
        """TRL's conversational preference record (explicit prompt)."""
        return {"prompt": self.prompt, "chosen": [{"role": "assistant", "content": self.chosen}],
                "rejected": [{"role": "assistant", "content": self.rejected}]}

    @property
    def question(self) -> str:
        return self.prompt[-1]["content"]


def _messages(value, name: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise DatasetError(f"field '{name}' must be text or a non-empty list of messages")
    messages = []
    for i, turn in enumerate(value):
        where = f"{name}[{i}]."
        if not isinstance(turn, dict):
            raise DatasetError(f"'{name}[{i}]' must be an object")
        role = _text(turn, "role", where)
        if role not in ROLES:
            raise DatasetError(f"unknown role '{role}' in '{where}role'")
        messages.append({"role": ROLES[role], "content": _text(turn, "content", where)})
    return messages


def _answer(value, name: str) -> str:
    """A chosen/rejected answer: text, or messages whose last turn is the assistant's."""
    if isinstance(value, str):
        text = value
    else:
        messages = _messages(value, name)
        if messages[-1]["role"] != "assistant":
            raise DatasetError(f"the last turn of '{name}' must be the assistant's answer")
        text = messages[-1]["content"]
    if not text.strip():
        raise DatasetError(f"empty '{name}' answer")
    return text


def to_preference(record) -> Preference:
    """One preference record as a Preference; raises DatasetError with the reason."""
    if not isinstance(record, dict):
        raise DatasetError(f"expected an object, got {type(record).__name__}")
    missing = [k for k in ("chosen", "rejected") if k not in record]
    if missing:
        keys = ", ".join(sorted(record)) or "none"
        raise DatasetError(f"missing field '{missing[0]}' (keys: {keys}); expected prompt/chosen/rejected")
    if "prompt" in record:
        prompt = record["prompt"]
        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else _messages(prompt, "prompt")
        if prompt[-1]["role"] != "user" or not prompt[-1]["content"].strip():
            raise DatasetError("the prompt must end with a non-empty user turn")
        chosen, rejected = record["chosen"], record["rejected"]
    else:  # implicit prompt: chosen and rejected are whole conversations that share their opening turns
        chosen, rejected = _messages(record["chosen"], "chosen"), _messages(record["rejected"], "rejected")
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        prompt = chosen[:shared]
        if not prompt or prompt[-1]["role"] != "user":
            raise DatasetError("without a 'prompt', chosen and rejected must share opening turns ending with the user's")
        chosen, rejected = chosen[shared:], rejected[shared:]
        if len(chosen) != 1 or len(rejected) != 1:
            raise DatasetError("chosen and rejected must each end in one assistant answer after the shared prompt")
    chosen_text, rejected_text = _answer(chosen, "chosen"), _answer(rejected, "rejected")
    if chosen_text.strip() == rejected_text.strip():
        raise DatasetError("chosen and rejected are the same answer")
    return Preference(prompt=prompt, chosen=chosen_text, rejected=rejected_text)


def read_preferences(path: str | Path, variables: dict[str, str] | None = None) -> list[Preference]:
    """Every record of a preference file (JSON array or JSONL); the first bad record raises DatasetError."""
    path = Path(path)
    records = records_of(path)
    pairs = []
    for number, (record, where) in enumerate(records, start=1):
        try:
            pairs.append(to_preference(fill_placeholders(record, variables or {})))
        except DatasetError as error:
            raise DatasetError(f"{path}: record {number}{where}: {error}") from None
    return pairs
