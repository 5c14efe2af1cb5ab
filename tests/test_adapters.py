"""Adapter folders on disk: which are listed, and the card python -m finetune writes beside the weights."""
from __future__ import annotations

import pytest

from chatapp.adapters import CARD_FILE, adapter_folders, read_card, write_card
from chatapp.settings import Settings


def test_a_card_is_read_back_as_written_and_an_adapter_made_elsewhere_has_none(tmp_path):
    write_card(tmp_path, {"base": {"model": "m"}, "data": {"file": tmp_path / "d.jsonl"}})
    assert read_card(tmp_path) == {"base": {"model": "m"}, "data": {"file": str(tmp_path / "d.jsonl")}}
    assert read_card(tmp_path / "missing") is None


def test_a_broken_card_raises_value_error(tmp_path):
    (tmp_path / CARD_FILE).write_text('{"base": ')
    with pytest.raises(ValueError):
        read_card(tmp_path)


def test_only_finished_adapters_are_listed(tmp_path):
    settings = Settings.from_env(data_dir=str(tmp_path))
    root = tmp_path / "adapters"
    for name in ("done", ".done.partial", "no-config"):
        (root / name).mkdir(parents=True)
    (root / "done" / "adapter_config.json").write_text("{}")
    (root / ".done.partial" / "adapter_config.json").write_text("{}")
    assert list(adapter_folders(settings)) == ["done"]
