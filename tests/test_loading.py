"""Loading the real base model from several threads at once, as the app does when a Fine-tune run starts
while the chat's model is still loading."""
from __future__ import annotations

import threading
from collections import Counter

import torch

from chatapp.loading import load_base
from chatapp.settings import Settings


def test_two_loads_at_once_each_get_their_own_precision(tmp_path):
    # transformers sets process-wide state while it builds a model: unserialised, the fp32 load came out
    # part bf16 or with weights left on the meta device
    settings = Settings.from_env(data_dir=tmp_path)
    wanted = {"32bit": torch.float32, "16bit": torch.bfloat16}
    loaded, failed = {}, []

    def load(precision: str) -> None:
        try:
            loaded[precision] = load_base(settings, precision=precision, device="cpu")[0]
        except Exception as exc:  # noqa: BLE001 - reported below with its precision
            failed.append(f"{precision}: {exc}")

    threads = [threading.Thread(target=load, args=(precision,)) for precision in wanted]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failed
    for precision, dtype in wanted.items():
        params = list(loaded[precision].parameters())
        assert Counter(p.dtype for p in params) == Counter({dtype: len(params)}), precision
        assert not any(p.is_meta for p in params), precision
    ids = torch.tensor([[1, 2, 3]])
    with torch.inference_mode():
        assert loaded["32bit"](input_ids=ids).logits.isfinite().all()
