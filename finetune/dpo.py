"""DPO: TRL's DPOTrainer with its DPOConfig (finetune.config.DPOTrainConfig). With a PEFT adapter the
reference model is the same base with the adapter disabled, so no second copy of the model is loaded."""
from __future__ import annotations

from trl import DPOTrainer


def make_trainer(model, args, train_dataset, eval_dataset, tokenizer, peft_config, callbacks) -> DPOTrainer:
    return DPOTrainer(model=model, ref_model=None, args=args, train_dataset=train_dataset,
                      eval_dataset=eval_dataset, processing_class=tokenizer, peft_config=peft_config,
                      callbacks=callbacks)
