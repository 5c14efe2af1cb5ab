"""Generation settings: the knobs users know from every chat UI. A leaf with no torch import, so the
remote back-end, the API and the prompts can name them without loading the model stack."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class GenerationSettings:
    """The knobs users know from every chat UI; greedy by default so answers are reproducible."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.95

    def to_generate_kwargs(self) -> dict:
        kwargs = {"max_new_tokens": int(self.max_new_tokens), "do_sample": bool(self.do_sample)}
        if self.do_sample:
            kwargs.update(temperature=float(self.temperature), top_k=int(self.top_k), top_p=float(self.top_p))
        else:  # keep transformers from warning about sampling flags that greedy ignores
            kwargs.update(temperature=None, top_k=None, top_p=None)
        return kwargs


def generation_from_dict(values: dict) -> GenerationSettings:
    known = asdict(GenerationSettings())
    return GenerationSettings(**{k: v for k, v in values.items() if k in known})

