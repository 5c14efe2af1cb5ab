"""An attention function for padding-free training rows, registered with transformers' AttentionInterface as
PACKED_ATTENTION; finetune.train loads the CPU base with it.

A padding-free row holds a batch's examples end to end, each with positions from 0. transformers masks them
off from each other with a block-diagonal mask, and the CPU SDPA kernel then computes every block of the
row's square: for 8 examples of ~100 tokens, 8 times the work that is needed. flash-attn's varlen kernels
skip those blocks on GPUs; nothing does on CPU, hence this function: one causal SDPA call per example. On a
756-token row of 8 examples a layer's attention took 19-21 ms forward and backward against 41-47 ms masked,
and a training run went from 231 to 288 real tokens/s (2 AVX512-BF16 cores).
"""
from __future__ import annotations

import weakref

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

PACKED_ATTENTION = "sdpa_packed_rows"
_last_row: tuple = (lambda: None, None)  # (weak reference to the position_ids last read, their lengths)


def example_lengths(position_ids: torch.Tensor | None) -> list[int] | None:
    """Lengths of the examples in one padding-free row (positions restart at 0 for each), or None when the
    input is not such a row. Every layer gets the same position_ids, so the answer is kept for that tensor."""
    global _last_row
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[0] != 1:
        return None
    if _last_row[0]() is position_ids:
        return _last_row[1]
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    lengths = None
    if len(starts) > 1 and starts[0] == 0:
        bounds = starts + [position_ids.shape[1]]
        lengths = [end - start for start, end in zip(bounds, bounds[1:])]
    _last_row = (weakref.ref(position_ids), lengths)
    return lengths


def sdpa_packed_rows(module, query, key, value, attention_mask, position_ids=None, **kwargs):
    """Causal SDPA on each example of a padding-free row; transformers' SDPA (with its mask) otherwise."""
    lengths = example_lengths(position_ids)
    if lengths is None or not query.shape[2] == key.shape[2] == sum(lengths):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    # SDPA's math backend: on examples of ~100 tokens its forward and backward took 12-13 ms a layer against
    # the flash kernel's 20-24 ms (the flash backward is tuned for long sequences).
    with sdpa_kernel(SDPBackend.MATH):
        outputs = [sdpa_attention_forward(module, q, k, v, None, is_causal=True, **kwargs)[0]
                   for q, k, v in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2))]
    return torch.cat(outputs, dim=1), None  # each is (batch, queries, heads, dim)


AttentionInterface.register(PACKED_ATTENTION, sdpa_packed_rows)
# The mask is still built, for the inputs that are not padding-free rows (padded batches, generation).
AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
