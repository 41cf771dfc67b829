"""The arithmetic behind `estimate`: model shape from a config.json, training FLOPs per
token with frozen base weights plus LoRA, and the GPU memory a run needs.

Pure functions of plain numbers, so the tests can pin them against hand-computed cases.
"""

from __future__ import annotations

from typing import Any

import msgspec

from brightrun_cli.presets.schema import TrainingConfig

GIB = 2**30
# Families whose MLP is gated (gate_proj * act(up_proj) -> down_proj: three matrices).
GATED_FAMILIES = {
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
    "gemma3_text", "phi3", "olmo", "olmo2", "granite", "cohere", "smollm3", "deepseek_v2", "internlm2",
}
# CUDA context, allocator fragmentation and workspace buffers: what a real run loses
# beyond its tensors on a GPU.
GPU_RESERVE_BYTES = 2 * GIB
# On a CPU the run's memory is the trainer process's: the interpreter with torch,
# transformers, peft and accelerate imported, the tokenized split and the allocator's
# slack, plus the checkpoint's pages read while loading (as stored: 2 bytes per
# parameter for the usual bf16 files). Measured peak RSS (2-core x86 host, torch 2.13
# CPU, fp32): builtin:tiny 0.572 GiB where its tensors are 0.05 GiB by this model;
# SmolLM2-135M 1.59 GiB, its tensors 0.80 GiB and its file 0.25 GiB.
CPU_PROCESS_BYTES = 0.52 * GIB
CHECKPOINT_BYTES_PER_PARAM = 2
# Bytes per quantised weight (bitsandbytes, as the trainer loads them: generation/quantization.py).
# 4bit, NF4 with double quantisation (QLoRA, Dettmers et al. 2023, section 3): 4 bits per
# weight; one absmax constant per block of 64 weights, itself quantised to 8 bits (1/64
# byte per weight); those constants' own fp32 scale per block of 256 absmax values
# (4 / (64 * 256) byte per weight): 0.5 + 0.015625 + 0.000244 = 0.515869 bytes, i.e.
# 4.127 bits (single quantisation would keep an fp32 absmax per 64: 4.5 bits).
NF4_DOUBLE_QUANT_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
# 8bit, LLM.int8: one byte per weight (plus one fp32 scale per output row, under 0.1%:
# left out as the norms are).
INT8_BYTES = 1.0
QUANTIZED_BYTES = {"4bit": NF4_DOUBLE_QUANT_BYTES, "8bit": INT8_BYTES}
# With fused_cross_entropy the logits exist one chunk at a time: 2**26 fp32 entries and their
# softmax (trainer/loss.py's chunk; Liger's chunks hold about tokens x hidden entries, no more).
FUSED_LOGITS_BYTES = 2 * 4 * 2**26


class ModelShape(msgspec.Struct, frozen=True):
    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    gated_mlp: bool
    experts: int = 1  # MoE: experts per layer (all held in memory) ...
    experts_active: int = 1  # ... of which this many run per token

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ModelShape":
        """Read a Hugging Face config.json (Llama-style or GPT-2-style key names)."""
        if "text_config" in config and "hidden_size" not in config:
            config = {**config["text_config"], "model_type": config["text_config"].get("model_type", config.get("model_type"))}

        def pick(*keys: str, default: Any = None) -> Any:
            for key in keys:
                if config.get(key) is not None:
                    return config[key]
            if default is None:
                raise KeyError(keys[0])
            return default

        hidden = int(pick("hidden_size", "n_embd", "d_model"))
        heads = int(pick("num_attention_heads", "n_head", "num_heads"))
        model_type = str(config.get("model_type", "unknown"))
        return cls(
            model_type=model_type,
            hidden=hidden,
            intermediate=int(pick("intermediate_size", "n_inner", "ffn_dim", default=4 * hidden)),
            layers=int(pick("num_hidden_layers", "n_layer", "num_layers")),
            heads=heads,
            kv_heads=int(pick("num_key_value_heads", default=heads)),
            head_dim=int(pick("head_dim", default=hidden // heads)),
            vocab=int(pick("vocab_size")),
            tied_embeddings=bool(config.get("tie_word_embeddings", model_type in ("gpt2",))),
            gated_mlp=model_type in GATED_FAMILIES or config.get("hidden_act") == "silu",
            experts=int(pick("num_local_experts", "num_experts", default=1)),
            experts_active=int(pick("num_experts_per_tok", default=1)),
        )

    @property
    def attn_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def attn_params(self) -> int:
        return self.hidden * (2 * self.attn_dim + 2 * self.kv_dim)

    @property
    def mlp_params(self) -> int:
        """One expert's MLP."""
        return (3 if self.gated_mlp else 2) * self.hidden * self.intermediate

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def total_params(self) -> int:
        """Parameters held in memory (norms and biases are below 0.1% and left out)."""
        head = 0 if self.tied_embeddings else self.embedding_params
        return self.layers * (self.attn_params + self.experts * self.mlp_params) + self.embedding_params + head

    @property
    def layer_linear_params(self) -> int:
        """The decoder layers' linear weights: what bitsandbytes quantises (not the embeddings,
        nor the output layer, which transformers keeps in the compute dtype)."""
        return self.layers * (self.attn_params + self.experts * self.mlp_params)

    @property
    def matmul_params_per_token(self) -> int:
        """Weights each token is multiplied by: every layer's attention and active MLP
        experts, plus the LM head (the embedding lookup is not a matmul)."""
        return self.layers * (self.attn_params + self.experts_active * self.mlp_params) + self.embedding_params

    def module_dims(self, name: str) -> tuple[int, int] | None:
        """(in, out) features of a LoRA target module, by its usual names."""
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, self.attn_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
            "o_proj": (self.attn_dim, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
            "c_attn": (h, self.attn_dim + 2 * self.kv_dim), "query_key_value": (h, self.attn_dim + 2 * self.kv_dim),
            "c_fc": (h, i), "fc1": (h, i), "fc2": (i, h), "dense_h_to_4h": (h, i), "dense_4h_to_h": (i, h),
            "out_proj": (self.attn_dim, h), "dense": (self.attn_dim, h),
        }.get(name)

    def targeted_modules(self, targets: list[str] | str) -> list[str]:
        if targets == "all-linear":
            names = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
            return names + (["gate_proj"] if self.gated_mlp else [])
        return targets

    def adapted(self, targets: list[str] | str) -> list[tuple[int, int, int, int]]:
        """Each targeted module of one layer: (in, out) features, how many copies a layer
        holds and how many a token runs through (MLP modules once per expert; an unknown
        name counts as a square projection, the typical case)."""
        modules = []
        for name in self.targeted_modules(targets):
            fan_in, fan_out = self.module_dims(name) or (self.hidden, self.hidden)
            mlp = name in ("gate_proj", "up_proj", "down_proj")
            modules.append((fan_in, fan_out, self.experts if mlp else 1, self.experts_active if mlp else 1))
        return modules

    def lora_params(self, targets: list[str] | str, rank: int, *, dora: bool = False) -> int:
        """Trainable parameters: r * (in + out) per targeted module per layer, and with DoRA
        its magnitude vector (out) too."""
        return self.layers * sum(held * (rank * (fan_in + fan_out) + (fan_out if dora else 0))
                                 for fan_in, fan_out, held, _ in self.adapted(targets))


def train_flops_per_token(shape: ModelShape, config: TrainingConfig, seq_len: int, *, causal: bool = False) -> float:
    """FLOPs to train on one token.

    Frozen weights: forward 2 FLOPs per weight, backward 2 more for the activation
    gradient only (no weight gradient) -> 4N, where full fine-tuning costs 6N.
    LoRA weights: the usual 6 per parameter. Attention scores and mixing: 4*L*d*s
    forward and twice that backward (the PaLM MFU convention, full s: masked kernels
    still compute the whole block). Gradient checkpointing re-runs the forward once.
    DoRA: `dora_flops_per_token`.
    causal: count only the causal half of the attention (a token attends to the s/2
    positions before it on average), the work a flash kernel that skips masked blocks
    does; what an MFU figure should count (bench/bench_trainer.py).
    """
    n_frozen = shape.matmul_params_per_token
    n_lora = _active_lora(shape, config)
    attn_forward = (2 if causal else 4) * shape.layers * shape.attn_dim * seq_len
    total = 4 * n_frozen + 6 * n_lora + 3 * attn_forward
    if config.gradient_checkpointing:
        total += 2 * n_frozen + 2 * n_lora + attn_forward
    return float(total) + dora_flops_per_token(shape, config, seq_len, training=True)


def eval_flops_per_token(shape: ModelShape, config: TrainingConfig, seq_len: int) -> float:
    """Forward only (validation loss)."""
    return (float(2 * shape.matmul_params_per_token + 2 * _active_lora(shape, config) + 4 * shape.layers * shape.attn_dim * seq_len)
            + dora_flops_per_token(shape, config, seq_len, training=False))


def dora_flops_per_token(shape: ModelShape, config: TrainingConfig, seq_len: int, *, training: bool) -> float:
    """What DoRA adds to a token's FLOPs, as peft computes it (tuners/lora/dora.py).

    Every forward of every adapted module rebuilds its LoRA weight B @ A by passing an
    identity matrix through A and B (2 * in * r * (in + out)), once per micro-batch, so
    shared by its batch_size * seq_len tokens. And in training with lora_dropout > 0 peft
    cannot reuse the base layer's output (the dropout applies to the base path too): it
    runs the adapted weight again on the dropped input, forward (2 per weight) and
    backward to that input (2 more), so the adapted frozen weights cost 8 per token where
    LoRA's cost 4 (10 and 6 with gradient checkpointing). The weight norm and the rescaling
    of outputs are elementwise (memory-bound, no FLOPs counted).
    0 without use_dora. Measured with torch's FlopCounterMode in tests/test_estimates.py.
    """
    if not config.use_dora:
        return 0.0
    forwards = 2 if training and config.gradient_checkpointing else 1
    modules = shape.adapted(config.target_modules)
    identity = shape.layers * sum(held * 2 * fan_in * config.lora_rank * (fan_in + fan_out) for fan_in, fan_out, held, _ in modules)
    total = forwards * identity / max(1, config.batch_size * seq_len)
    if training and config.lora_dropout > 0:
        adapted = shape.layers * sum(active * fan_in * fan_out for fan_in, fan_out, _, active in modules)
        total += (2 * forwards + 2) * adapted
    return float(total)


def _active_lora(shape: ModelShape, config: TrainingConfig) -> int:
    lora = shape.lora_params(config.target_modules, config.lora_rank)
    return lora * shape.experts_active // shape.experts if shape.experts > 1 else lora


class MemoryNeed(msgspec.Struct, frozen=True):
    weights: float
    lora_and_optimizer: float
    activations: float
    logits: float
    reserve: float  # GPU: CUDA context and allocator; CPU: the trainer process itself and the checkpoint it reads

    @property
    def total(self) -> float:
        return self.weights + self.lora_and_optimizer + self.activations + self.logits + self.reserve

    def to_json(self) -> dict[str, float]:
        gb = lambda b: round(b / GIB, 2)  # noqa: E731
        return {
            "weights_gb": gb(self.weights), "lora_and_optimizer_gb": gb(self.lora_and_optimizer),
            "activations_gb": gb(self.activations), "logits_gb": gb(self.logits),
            "reserve_gb": gb(self.reserve), "total_gb": gb(self.total),
        }


def memory_need(shape: ModelShape, config: TrainingConfig, seq_len: int, *, weight_bytes: int, on_gpu: bool,
                shards: int = 1) -> MemoryNeed:
    """Peak memory of one device for a micro-batch: holding the whole model (DDP, one
    process), or with `shards` > 1 its 1/shards part under FSDP.

    Weights in the compute dtype; with `config.quantization` the decoder layers' linear
    weights at QUANTIZED_BYTES each instead (the embeddings and output layer stay in the
    compute dtype: trainer/loop.py loads them so); the transient bf16 copy of the one
    weight being dequantised for a matmul is within the reserve. LoRA params in fp32 with
    their gradient and two AdamW moments (16 bytes each), quantised base or not. Activations saved for backward, per token and layer
    (frozen linears need not keep their inputs, autograd saves only what a gradient
    needs): the two norm inputs (2h), q, k, v and the attention output (2a + 2kv), the
    gated MLP's gate, up and activation outputs (3i, 2i ungated), and each LoRA module's
    own copy of its input (its in-features: peft casts the input to the adapter's dtype
    per module, and autocast casts it back, so q, k and v keep three copies, not one
    shared: measured with saved_tensors_hooks, and on an H200 where counting one shared
    copy planned a Llama-3.2-1B step at 22.5 GiB that peaked at 31.6), and with
    lora_dropout its dropout mask (a byte an element on CUDA; the CPU's dropout keeps a
    noise tensor of the input's size). DoRA: each module's base output and LoRA output
    (2 x out), and with lora_dropout in bf16 a copy of every adapted weight (peft runs the
    dropped input through the weight again: measured with saved_tensors_hooks, the test
    re-measures it). With gradient
    checkpointing only each layer's input (h) is kept, plus one layer recomputed.
    Logits: the LM head output in the compute dtype plus its fp32 copy for the loss, or
    with `fused_cross_entropy` one chunk of them (FUSED_LOGITS_BYTES at most).
    FSDP (the trainer's FSDP path, never with a quantised base): the base is held in fp32,
    sharded with the LoRA weights and their optimizer state, and computed in bf16; each
    unit (a decoder layer, or the embeddings) is gathered whole while it runs, the next
    one prefetched.
    """
    tokens = config.batch_size * seq_len
    act_bytes = 2 if shards > 1 else weight_bytes
    mlp_saved = (3 if shape.gated_mlp else 2) * shape.intermediate * shape.experts_active
    modules = shape.adapted(config.target_modules)
    lora_inputs = sum(fan_in * active for fan_in, _, _, active in modules)
    if config.lora_dropout > 0:  # each module's dropout keeps its mask: a byte an element on CUDA, a full noise tensor on a CPU
        lora_inputs *= 1.5 if on_gpu else 2
    per_layer = 2 * shape.hidden + 2 * shape.attn_dim + 2 * shape.kv_dim + mlp_saved + lora_inputs
    layer_weight_copies = identity = 0
    if config.use_dora:
        # DoRA keeps each module's base and LoRA outputs for its magnitude's gradient; with
        # lora_dropout under mixed precision, also the compute-dtype copy of the adapted
        # weight it runs the dropped input through (dora_flops_per_token).
        per_layer += 2 * sum(fan_out * active for _, fan_out, _, active in modules)
        if config.lora_dropout > 0 and act_bytes == 2:
            layer_weight_copies = act_bytes * sum(held * fan_in * fan_out for fan_in, fan_out, held, _ in modules)
        # The identity it rebuilds B @ A from: in x in in the adapter's fp32, and its cast
        # under autocast; one module's at a time (28672^2 for a 70B model's down_proj: 4.6 GiB).
        identity = max(fan_in for fan_in, _, _, _ in modules) ** 2 * (4 + (2 if act_bytes == 2 else 0))
    if config.gradient_checkpointing:
        activations = tokens * act_bytes * (shape.layers * shape.hidden + per_layer) + layer_weight_copies + identity
    else:
        activations = tokens * act_bytes * shape.layers * per_layer + shape.layers * layer_weight_copies + identity
    if shards > 1:
        layer_params = shape.attn_params + shape.experts * shape.mlp_params
        weights = shape.total_params * 4 / shards + act_bytes * max(2 * layer_params, shape.embedding_params)
    elif config.quantization != "none":
        quantized = shape.layer_linear_params
        weights = quantized * QUANTIZED_BYTES[config.quantization] + (shape.total_params - quantized) * weight_bytes
    else:
        weights = shape.total_params * weight_bytes
    logits = tokens * shape.vocab * (act_bytes + 4)
    return MemoryNeed(
        weights=float(weights),
        lora_and_optimizer=float(shape.lora_params(config.target_modules, config.lora_rank, dora=config.use_dora) * 16 / shards),
        activations=float(activations),
        logits=float(min(logits, FUSED_LOGITS_BYTES) if config.fused_cross_entropy else logits),
        reserve=float(GPU_RESERVE_BYTES if on_gpu else CPU_PROCESS_BYTES + CHECKPOINT_BYTES_PER_PARAM * shape.total_params),
    )
