"""An attention function for prompts that continue a cached prefix, registered with transformers'
AttentionInterface as PREFIX_ATTENTION; the registry loads the base with it (chatapp/model.py)."""
from __future__ import annotations

import weakref

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

PREFIX_ATTENTION = "sdpa_after_prefix"
_last_mask: tuple = (lambda: None, 0)  # (weak reference to the mask last checked, its offset)




def causal_offset(mask: torch.Tensor | None, queries: int) -> int:
    """How many cached positions come before the queries, if `mask` is exactly causal after them (one
    sequence, no padding); else 0. The answer is kept for the mask object, which every layer shares."""
    global _last_mask
    if mask is None or queries < 2 or mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[0] != 1:
        return 0
    if _last_mask[0]() is mask:
        return _last_mask[1]
    keys = int(mask[0, 0, -1].sum())
    past = keys - queries
    causal = torch.ones(queries, keys, dtype=torch.bool, device=mask.device).tril(past)
    if past <= 0 or not torch.equal(mask[0, 0, :, :keys], causal) or bool(mask[0, 0, :, keys:].any()):
        past = 0
    _last_mask = (weakref.ref(mask), past)
    return past


def sdpa_after_prefix(module, query, key, value, attention_mask, **kwargs):
    """SDPA that stays on the causal kernel when a prompt continues a cached prefix.

    With fewer queries than keys, transformers hands SDPA an explicit mask, and the CPU kernel then
    computes every block: slower than running the whole prompt from scratch. Queries padded in front
    to the keys' length make it a plain causal problem again; the padding rows cost about
    (prefix/prompt)^2 of the attention, and are dropped. Every other case is transformers' SDPA as is.
    """
    past = causal_offset(attention_mask, query.shape[2])
    if not past:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    keys = past + query.shape[2]
    padded = torch.cat([query.new_zeros(*query.shape[:2], past, query.shape[3]), query], dim=2)
    out, weights = sdpa_attention_forward(module, padded, key[:, :, :keys], value[:, :, :keys], None,
                                          is_causal=True, **kwargs)
    return out[:, past:], weights  # out is (batch, queries, heads, dim)


AttentionInterface.register(PREFIX_ATTENTION, sdpa_after_prefix)
AttentionMaskInterface.register(PREFIX_ATTENTION, sdpa_mask)
