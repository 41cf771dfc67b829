"""Packed-sequence attention without cross-contamination and without wasted work.

Packing puts several conversations in one row. A block-diagonal mask over the whole
row keeps them apart, but still costs O(row_length^2) attention of which most is
masked out. Here each conversation attends only to itself: SDPA with `is_causal` on
each [start, end) slice of the row (the cu_seq_lens that flash-attention's varlen
kernels take), so attention costs sum(len_i^2) and SDPA can use its fastest kernel.
Registered as a transformers attention implementation; with no cu_seq_lens (e.g. during
generation) it is plain SDPA.
"""

from __future__ import annotations

NAME = "brightrun_varlen"


def varlen_sdpa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    bounds = cu.tolist()
    parts = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], dropout_p=dropout, scale=scaling, is_causal=True
        )
        for s, e in zip(bounds[:-1], bounds[1:])
    ]
    out = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, varlen_sdpa_forward)
    return NAME
