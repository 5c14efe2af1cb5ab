"""ORPO: TRL's ORPOTrainer (trl.experimental) with its ORPOConfig (finetune.config.ORPOTrainConfig).
ORPO needs no reference model: an odds-ratio penalty is added to the NLL of the chosen answers."""
from __future__ import annotations

import os

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # as in finetune/config.py
from trl.experimental.orpo import ORPOTrainer  # noqa: E402


def make_trainer(model, args, train_dataset, eval_dataset, tokenizer, peft_config, callbacks) -> ORPOTrainer:
    return ORPOTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                       processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
