"""The trainer on a CUDA GPU: bf16, fused varlen attention, gradient checkpointing, Liger,
GPU metrics, the real `accelerate launch` argv, and FSDP/DeepSpeed accelerate configs
(DeepSpeed cases skip without the deepspeed package). Skipped where no GPU exists (CI);
run on a GPU machine with `pytest -m gpu tests/test_trainer_gpu.py`."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from brightrun_cli.runners.accelerate import accelerate_argv
from brightrun_cli.trainer.main import main as trainer_main

from test_trainer import EXAMPLES, result, write_run_dir

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
SRC = str(Path(__file__).resolve().parents[1] / "src")


def split_examples() -> tuple[list[str], list[str]]:
    lines = EXAMPLES.read_text().splitlines()
    return [l for i, l in enumerate(lines) if i % 10], [l for i, l in enumerate(lines) if i % 10 == 0]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_fused_varlen_attention_matches_per_conversation_sdpa():
    """One flash varlen call over a packed row == causal SDPA on each conversation alone."""
    from brightrun_cli.trainer import attention

    assert attention._cuda_varlen() is not None, "torch has no usable torch.nn.attention.varlen"
    gen = torch.Generator(device="cuda").manual_seed(0)
    lengths = [37, 5, 120, 64, 1, 90]
    total, heads, dim = sum(lengths), 4, 64
    cu = torch.tensor([0] + lengths, device="cuda").cumsum(0).to(torch.int32)
    q, k, v = (torch.randn(1, heads, total, dim, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
               for _ in range(3))

    class Module:
        num_key_value_groups = 1

    out, _ = attention.varlen_sdpa_forward(Module(), q, k, v, None, scaling=dim ** -0.5, cu_seq_lens_q=cu,
                                           max_length_q=max(lengths))
    out.float().square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    ref_parts = []
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    for s, e in zip(cu.tolist()[:-1], cu.tolist()[1:]):
        ref_parts.append(torch.nn.functional.scaled_dot_product_attention(qf[:, :, s:e], kf[:, :, s:e], vf[:, :, s:e], is_causal=True))
    ref = torch.cat(ref_parts, dim=2).transpose(1, 2)
    ref.square().sum().backward()
    assert out.shape == ref.shape
    assert torch.allclose(out.float(), ref, atol=2e-2, rtol=2e-2)
    for got, want in zip(grads, (qf.grad, kf.grad, vf.grad)):
        assert torch.allclose(got.float(), want, atol=5e-2, rtol=5e-2)


def test_bf16_lora_on_gpu_learns_and_reports_gpu_metrics(tmp_path):
    train, held_out = split_examples()
    spec = write_run_dir(tmp_path, conversations=train, validation=held_out, logging_steps=5, precision="bf16",
                         learning_rate=1e-3, num_epochs=3, max_seq_length=256)
    assert trainer_main([str(spec)]) == 0
    res = result(tmp_path)
    assert res["status"] == "completed"
    reduction = 1 - res["final_validation_loss"] / res["base_validation_loss"]
    print(f"GPU bf16: held-out loss {res['base_validation_loss']:.3f} -> {res['final_validation_loss']:.3f} "
          f"(-{reduction:.0%}) in {res['duration_s']:.1f} s")
    assert reduction >= 0.5
    train_points = [m for m in metrics(tmp_path) if m["split"] == "train"]
    assert train_points and all(m["gpu_memory"] > 0 for m in train_points)
    if importlib.util.find_spec("pynvml") is not None:
        assert all(m["gpu_utilization"] is not None for m in train_points)
    log = (tmp_path / "trainer.log").read_text()
    assert "precision bf16" in log and "attention=brightrun_varlen" in log and "torch.bfloat16" in log
    if importlib.util.find_spec("liger_kernel") is not None:
        assert "liger kernels applied" in log
    from safetensors import safe_open

    with safe_open(str(tmp_path / "final" / "adapter_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}


def test_gradient_checkpointing_on_gpu_gives_the_same_first_step(tmp_path):
    losses = []
    for checkpointing in (False, True):
        run = tmp_path / str(checkpointing)
        spec = write_run_dir(run, precision="bf16", gradient_checkpointing=checkpointing, max_steps=3)
        assert trainer_main([str(spec)]) == 0
        losses.append([m["training_loss"] for m in metrics(run) if m["split"] == "train"])
    assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-2)


def test_accelerate_launch_argv_trains_on_the_gpu(tmp_path):
    spec = write_run_dir(tmp_path, precision="auto", max_steps=4)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(accelerate_argv(str(spec), num_processes=1),
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert result(tmp_path)["status"] == "completed"
    assert "device cuda" in (tmp_path / "trainer.log").read_text()
    assert "accelerate config" not in proc.stderr.lower()


# accelerate config files as `accelerate config` writes them for one machine (distributed
# types quoted: YAML reads a bare NO as false). FSDP1 keeps accelerate's defaults
# (use_orig_params, cpu_ram_efficient_loading + sync_module_states: rank 0 loads the weights).
SHARDED_CONFIGS = {
    "fsdp1": "distributed_type: FSDP\nfsdp_config:\n  fsdp_version: 1\n  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP\n"
             "  fsdp_sharding_strategy: FULL_SHARD\n  fsdp_state_dict_type: SHARDED_STATE_DICT\n",
    "fsdp2": "distributed_type: FSDP\nfsdp_config:\n  fsdp_version: 2\n  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP\n"
             "  fsdp_state_dict_type: SHARDED_STATE_DICT\n  fsdp_reshard_after_forward: true\n",
    "zero2": "distributed_type: DEEPSPEED\ndeepspeed_config:\n  zero_stage: 2\n",
    "zero3": "distributed_type: DEEPSPEED\ndeepspeed_config:\n  zero_stage: 3\n  zero3_save_16bit_model: true\n"
             "  zero3_init_flag: false\n",
}


def _launch(spec: Path, config: str | None) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))}
    kind = None
    if config is not None:
        kind = "FSDP" if "FSDP" in config else "DEEPSPEED"
        (spec.parent / "accelerate_config.yaml").write_text(config)
    argv = accelerate_argv(str(spec), num_processes=1, config_file=str(spec.parent / "accelerate_config.yaml") if config else None,
                           distributed_type=kind)
    proc = subprocess.run(argv, cwd=spec.parent, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("name", list(SHARDED_CONFIGS))
def test_sharded_accelerate_config_trains_saves_the_adapter_and_resumes(tmp_path, name):
    """One GPU under FSDP1/FSDP2/ZeRO-2/ZeRO-3 (real accelerate, no CPU stand-in): the adapter has
    the plain run's keys and shapes, held-out loss goes down, a checkpoint resumes to the same end."""
    if name.startswith("zero"):
        pytest.importorskip("deepspeed")
    train, held_out = split_examples()
    runs = {}
    for run in ("plain", "sharded"):
        runs[run] = tmp_path / run
        extra = {"accelerate_config": "accelerate_config.yaml", "save_steps": 4} if run == "sharded" else {}
        spec = write_run_dir(runs[run], conversations=train[:64], validation=held_out[:16], batch_size=4,
                             num_epochs=1, max_steps=8, precision="bf16", **extra)
        _launch(spec, SHARDED_CONFIGS[name] if run == "sharded" else None)
    sharded = runs["sharded"]
    res = result(sharded)
    assert res["status"] == "completed" and res["steps"] == 8
    assert res["final_validation_loss"] < res["base_validation_loss"]
    kind = "FSDP" if name.startswith("fsdp") else "DEEPSPEED"
    assert f"precision bf16, {kind}" in (sharded / "trainer.log").read_text()
    from safetensors.torch import load_file

    plain_adapter = load_file(str(runs["plain"] / "final" / "adapter_model.safetensors"))
    adapter = load_file(str(sharded / "final" / "adapter_model.safetensors"))
    assert {k: v.shape for k, v in adapter.items()} == {k: v.shape for k, v in plain_adapter.items()}
    print(f"{name}: held-out {res['base_validation_loss']:.3f} -> {res['final_validation_loss']:.3f}, "
          f"plain run {result(runs['plain'])['final_validation_loss']:.3f}")

    if name.startswith("zero"):  # the engine's checkpoint leaves the frozen base out
        import torch

        [states] = (sharded / "checkpoints" / "step-4").rglob("*mp_rank_00_model_states.pt")  # zero_pp_rank_0_... under ZeRO-3
        module = torch.load(states, map_location="cpu", weights_only=False)["module"]  # our own file
        frozen = [k for k in module if "lora_" not in k]
        # torch keeps the key of an output layer tied to the (frozen) embeddings; nothing else of the base.
        assert len(module) > 1 and frozen in ([], ["base_model.model.lm_head.weight"]), frozen[:5]

    resumed = tmp_path / "resumed"
    shutil.copytree(sharded, resumed, ignore=shutil.ignore_patterns("final", "result.json", "metrics.jsonl", "*.log"))
    spec = json.loads((resumed / "spec.json").read_text())
    (resumed / "spec.json").write_text(json.dumps({**spec, "resume": True}))
    _launch(resumed / "spec.json", SHARDED_CONFIGS[name])
    assert "resumed from" in (resumed / "trainer.log").read_text()
    again = load_file(str(resumed / "final" / "adapter_model.safetensors"))
    assert max((again[k].float() - adapter[k].float()).abs().max().item() for k in adapter) < 1e-2


# ---------------------------------------------------------------- issue 18: fused loss, QLoRA, QDoRA


def test_fused_head_loss_on_the_gpu_equals_the_plain_loss(tmp_path):
    """Liger's fused linear cross-entropy (or the torch chunks without liger-kernel) in bf16."""
    from accelerate import Accelerator
    from transformers import AutoTokenizer

    from brightrun_cli.builtin import resolve_base_model
    from brightrun_cli.trainer import loop
    from brightrun_cli.trainer.data import collate, ensure_chat_template, tokenize_file
    from brightrun_cli.trainer.spec import load_spec

    spec = load_spec(write_run_dir(tmp_path, target_modules="all-linear", precision="bf16"))
    path = resolve_base_model("builtin:tiny")
    tokenizer = AutoTokenizer.from_pretrained(path)
    ensure_chat_template(tokenizer)
    examples, _ = tokenize_file(tokenizer, spec.train_file, 512, True)
    batch = collate(examples[:8], True, tokenizer.pad_token_id)
    acc = Accelerator(mixed_precision="bf16")

    class Log:
        def info(self, *args):
            pass

    model = loop.attach_lora(spec, loop.load_base(spec, path, "bf16", Log()), Log()).to(acc.device)
    head = loop.fused_loss.fusable_head(model)
    assert loop.fused_loss.frozen(head)
    results = []
    for used in (None, head):
        model.zero_grad()
        value, _ = loop.batch_loss_sum(acc, batch, model, used)
        value.backward()
        results.append((value.detach().float(), [p.grad.float().clone() for p in model.parameters() if p.requires_grad]))
    (plain, plain_grads), (fused, fused_grads) = results
    print(f"fused loss {fused.item():.4f} vs plain {plain.item():.4f} (liger: {loop.fused_loss._liger() is not None})")
    assert torch.allclose(fused, plain, rtol=2e-2)
    cos = torch.nn.functional.cosine_similarity(torch.cat([g.flatten() for g in fused_grads]),
                                                torch.cat([g.flatten() for g in plain_grads]), dim=0)
    assert cos > 0.99


def _peft_logits_and_merge(final: Path, base_path: str, quantization: str) -> None:
    """The adapter loads with plain peft on the base quantised as trained, and on the
    unquantised base merges (merge_and_unload) into a model whose logits are base + adapter's."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from brightrun_cli.generation.quantization import bnb_config

    ids = torch.randint(0, 250, (1, 48), device="cuda", generator=torch.Generator(device="cuda").manual_seed(0))
    quantized = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.bfloat16, device_map={"": 0},
                                                     quantization_config=bnb_config(quantization, torch.bfloat16))
    with torch.no_grad():
        on_quantized = PeftModel.from_pretrained(quantized, str(final)).eval()(ids).logits.float()
    assert torch.isfinite(on_quantized).all()
    plain = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32).to("cuda")
    with torch.no_grad():
        with_adapter = PeftModel.from_pretrained(plain, str(final)).eval()
        expected = with_adapter(ids).logits
        merged = with_adapter.merge_and_unload()(ids).logits
    torch.testing.assert_close(merged, expected, rtol=1e-3, atol=1e-3)
    # The adapter trained against the quantised weights is close to, not equal to, its effect on the originals.
    print(f"{quantization}: max |logits on quantised base - on original| = {(on_quantized - expected).abs().max().item():.3f}")


@pytest.mark.parametrize("variant", ["4bit", "8bit", "4bit-dora"])
def test_qlora_trains_builtin_tiny_and_its_adapter_loads_and_merges(tmp_path, variant, monkeypatch):
    from brightrun_cli.builtin import resolve_base_model
    from brightrun_cli.generation.engine import load_chat_model

    quantization, dora = variant.split("-")[0], variant.endswith("dora")
    train, held_out = split_examples()
    spec = write_run_dir(tmp_path, conversations=train, validation=held_out[:16], precision="bf16", learning_rate=1e-3,
                         num_epochs=2, max_seq_length=256, quantization=quantization, use_dora=dora,
                         eval={"limit": 4, "max_new_tokens": 16})
    monkeypatch.setenv("BRIGHTRUN_PROFILE_STEP", "10")  # QDoRA took 11x QLoRA's step on an H200: where
    assert trainer_main([str(spec)]) == 0
    res = result(tmp_path)
    print(f"QLoRA {variant}: held-out {res['base_validation_loss']:.3f} -> {res['final_validation_loss']:.3f} "
          f"in {res['duration_s']:.1f} s")
    print("\n".join((tmp_path / "profile.txt").read_text().splitlines()[:16]))
    assert res["status"] == "completed" and res["final_validation_loss"] < 0.8 * res["base_validation_loss"]
    assert f"quantization={quantization} (bitsandbytes)" in (tmp_path / "trainer.log").read_text()
    assert json.loads((tmp_path / "final" / "eval_summary.json").read_text())["status"] == "completed"
    _peft_logits_and_merge(tmp_path / "final", resolve_base_model("builtin:tiny"), quantization)
    assert load_chat_model("builtin:tiny", tmp_path / "final").quantization == quantization  # models try's loading


def test_qlora_4bit_trains_a_random_llama_1b_in_a_fraction_of_its_bf16_memory(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from make_random_llama import make_random_llama

    model_dir = tmp_path / "llama-1b"
    params = make_random_llama(model_dir, "llama-3.2-1b")
    train, held_out = split_examples()
    peaks = {}
    for quantization in ("none", "4bit"):
        run = tmp_path / quantization
        spec = write_run_dir(run, conversations=train[:96], validation=held_out[:8], base_model=str(model_dir),
                             precision="bf16", batch_size=8, max_steps=6, max_seq_length=512, quantization=quantization,
                             target_modules="all-linear", eval=None)
        # Each in a process of its own, as `train` runs it: the peak is per process, and one
        # process training both would count the first run's leftovers in the second's peak.
        proc = subprocess.run([sys.executable, "-m", "brightrun_cli.trainer", str(spec)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))})
        assert proc.returncode == 0, proc.stderr[-2000:]
        res = result(run)
        assert res["status"] == "completed" and res["steps"] == 6
        peaks[quantization] = max(m["gpu_memory"] for m in metrics(run) if m["split"] == "train")
    print(f"random Llama-3.2-1B shape ({params / 1e9:.2f}B): peak {peaks['none']:.2f} GiB bf16, {peaks['4bit']:.2f} GiB 4-bit")
    # 1.0B of the 1.24B parameters are decoder-layer weights: 2 GB in bf16, 0.52 GB in NF4.
    assert peaks["4bit"] < peaks["none"] - 1.0
    _peft_logits_and_merge(tmp_path / "4bit" / "final", str(model_dir), "4bit")
