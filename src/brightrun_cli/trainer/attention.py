"""Packed-sequence attention without cross-contamination and without wasted work.

Packing puts several conversations in one row. A block-diagonal mask over the whole
row keeps them apart, but still costs O(row_length^2) attention of which most is
masked out. Here each conversation attends only to itself: SDPA with `is_causal` on
each [start, end) slice of the row (the cu_seq_lens that flash-attention's varlen
kernels take), so attention costs sum(len_i^2) and SDPA can use its fastest kernel.
On a CUDA device in bf16/fp16, the whole row goes through one call of PyTorch's own
flash-attention varlen kernel (`torch.nn.attention.varlen.varlen_attn`, PyTorch >= 2.9)
instead of one SDPA launch per conversation, so no flash-attn package is needed.
Registered as a transformers attention implementation; with no cu_seq_lens (e.g. during
generation) it is plain SDPA.
"""

from __future__ import annotations

import functools

NAME = "brightrun_varlen"


@functools.cache
def _cuda_varlen():
    """A causal varlen flash-attention call for (tokens, heads, dim) tensors, or None.

    The signature of torch's varlen_attn moved between releases (`is_causal=` in 2.9/2.10,
    `window_size=(-1, 0)` later); both are handled, anything else falls back to SDPA.
    """
    try:
        import inspect

        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "window_size" in params:
        causal = {"window_size": (-1, 0)}
    elif "is_causal" in params:
        causal = {"is_causal": True}
    else:
        return None

    def call(q, k, v, cu, max_len, scale):
        return varlen_attn(q, k, v, cu, cu, max_len, max_len, scale=scale, **causal)

    return call


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
    fused = _cuda_varlen() if query.is_cuda and query.dtype in (torch.bfloat16, torch.float16) and not dropout else None
    if fused is not None:
        # (1, heads, tokens, dim) -> (tokens, heads, dim) and back to (1, tokens, heads, dim).
        max_len = kwargs.get("max_length_q") or int((cu[1:] - cu[:-1]).max())
        out = fused(query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1),
                    cu.to(device=query.device, dtype=torch.int32), int(max_len), scaling)
        return out.unsqueeze(0), None
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
