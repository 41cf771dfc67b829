"""The training loss without the full logits: the output layer and cross-entropy fused in chunks.

At a large vocabulary the logits are the biggest tensors of a LoRA step: Llama-3's
128,256 entries per target token are 0.5 MB in fp32, so a micro-batch of 16k target
tokens holds 8 GB of logits plus as much again for their gradient, all for one matmul
whose weight is frozen. Instead the model runs up to its output layer, whose input (the
last hidden states at the target columns) is taken by a forward pre-hook that hands
the layer an empty slice; then the head's matmul and the cross-entropy run chunk by
chunk, each chunk's gradient with respect to the hidden states computed right away
(the head is frozen: it needs none of its own), so only one chunk's logits exist at a
time. On CUDA with liger-kernel installed that is Liger's fused Triton kernel
(`LigerFusedLinearCrossEntropyLoss`); elsewhere the same algorithm in torch below.
Both return the summed loss over the given targets, as the plain path does.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util

import torch

# Logits of one chunk in fp32: 64 Mi entries = 256 MB (512 tokens at a 128k vocabulary).
CHUNK_LOGITS = 1 << 26


def fusable_head(model):
    """The model's output layer when it is a plain linear layer the loss can fuse (a LoRA-wrapped
    or quantised one is not), else None. It must also be frozen while training (`frozen`)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    plain = isinstance(head, torch.nn.Linear) and head.bias is None and type(head.weight) is torch.nn.Parameter
    return head if plain else None


def frozen(head) -> bool:
    """Gradients reach the head's input only: a head that trains keeps the plain loss."""
    return head is not None and not head.weight.requires_grad


@contextlib.contextmanager
def head_inputs(head):
    """While active, the model's output layer `head` computes nothing and its inputs (the last
    hidden states at the kept columns) are appended to the yielded list."""
    taken: list = []

    def take(module, args):
        taken.append(args[0])
        return (args[0][..., :0, :],)

    handle = head.register_forward_pre_hook(take)
    try:
        yield taken
    finally:
        handle.remove()


def linear_cross_entropy_sum(hidden, weight, targets):
    """sum over rows of cross_entropy(hidden @ weight.T, targets), without all the logits at once.
    hidden: (tokens, h), weight: (vocab, h) frozen, targets: (tokens,) all valid."""
    weight = weight.to(hidden.dtype)
    if hidden.is_cuda and _liger() is not None:
        return _liger()(weight, hidden, targets)
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets)


@functools.cache
def _liger():
    if importlib.util.find_spec("liger_kernel") is None:
        return None
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:  # liger-kernel without a usable triton
        return None
    return LigerFusedLinearCrossEntropyLoss(reduction="sum")


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Liger's algorithm in torch: per chunk, logits in fp32, the loss, and the gradient
    with respect to the hidden states (softmax - one-hot) @ weight, kept for backward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets):
        chunk = max(1, CHUNK_LOGITS // weight.shape[0])
        grad = torch.empty_like(hidden) if hidden.requires_grad else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            logits = (hidden[start:start + chunk] @ weight.T).float()
            rows = targets[start:start + chunk]
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, rows[:, None]).squeeze(1)).sum()
            if grad is not None:
                probs = torch.exp(logits - lse[:, None])
                probs[torch.arange(rows.shape[0], device=rows.device), rows] -= 1.0
                grad[start:start + chunk] = (probs.to(weight.dtype) @ weight).to(hidden.dtype)
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output.to(grad.dtype), None, None
