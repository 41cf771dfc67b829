"""QLoRA, DoRA and rsLoRA without a GPU: the 4-bit memory model against a hand computation,
the memory advice, refusals before anything is written (CPU host, no bitsandbytes, a
sharded engine), `hosts check` reporting bitsandbytes, and the fused loss against the
plain one. Training with each variant is in test_lora_variants_slow.py."""

from __future__ import annotations

import json

import pytest

from brightrun_cli.presets.schema import TrainingConfig
from brightrun_cli.registry.rows import HostRow
from brightrun_cli.runners.probe import Probe
from brightrun_cli.services import hosts as hosts_service
from brightrun_cli.services.estimates import estimate
from brightrun_cli.services.flops import GIB, ModelShape, memory_need
from brightrun_cli.workspace import Workspace
from brightrun_cli.trainer.main import main as trainer_main

from test_accelerate_config import FSDP2, assert_nothing_created, chat, train, write  # noqa: F401  (fixture)
from model_helpers import dataset_with_stats as _dataset
from model_helpers import model_dir as _model_dir
from test_hosts_local import fake_nvidia_smi
from test_trainer import result, write_run_dir

LLAMA_31_8B = {
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False,
    "hidden_act": "silu",
}
LLAMA_2_13B = {
    "model_type": "llama", "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
    "num_attention_heads": 40, "num_key_value_heads": 40, "vocab_size": 32000, "tie_word_embeddings": False,
    "hidden_act": "silu",
}


@pytest.fixture
def ws() -> Workspace:
    return Workspace.open()


# ---------------------------------------------------------------- memory model


def test_4bit_weights_of_llama_31_8b_match_the_hand_computation():
    shape = ModelShape.from_config(LLAMA_31_8B)
    # Quantised: every decoder layer's linear weights. Attention q, k, v, o with 8 KV heads of 128:
    # 4096 * (4096 + 1024 + 1024 + 4096) = 41,943,040; gated MLP 3 * 4096 * 14336 = 176,160,768.
    per_layer = 41_943_040 + 176_160_768
    quantized = 32 * per_layer
    assert quantized == 6_979_321_856
    # NF4 with double quantisation, per weight: 4 bits = 0.5 byte; one 8-bit absmax per block of
    # 64 weights = 1/64 byte; one fp32 scale per 256 of those blocks = 4 / 16384 byte.
    # 6,979,321,856 * (0.5 + 0.015625 + 0.000244140625) = 3,489,660,928 + 109,051,904 + 1,703,936.
    quantized_bytes = 3_489_660_928 + 109_051_904 + 1_703_936
    assert quantized_bytes == 3_600_416_768  # 4.127 bits per weight
    # Not quantised, in bf16: the input embeddings and the untied output layer, 128256 * 4096 each.
    rest_bytes = 2 * 128_256 * 4096 * 2
    assert rest_bytes == 2_101_346_304
    config = TrainingConfig(batch_size=1, quantization="4bit", gradient_checkpointing=True)
    need = memory_need(shape, config, 2048, weight_bytes=2, on_gpu=True)
    assert need.weights == quantized_bytes + rest_bytes == 5_701_763_072  # 5.31 GiB, where bf16 takes 14.96
    # LoRA r=16 on q, k, v, o stays fp32 with its gradient and AdamW moments: 16 bytes a parameter.
    lora = 32 * 16 * ((4096 + 4096) + (4096 + 1024) + (4096 + 1024) + (4096 + 4096))
    assert need.lora_and_optimizer == lora * 16 == 218_103_808
    # Activations are the compute dtype's, quantised or not: the same as the bf16 run's.
    bf16 = memory_need(shape, config.replace(quantization="none"), 2048, weight_bytes=2, on_gpu=True)
    assert need.activations == bf16.activations and need.logits == bf16.logits
    assert need.total < 10 * GIB < 18 * GIB < bf16.total  # an 8B model fits a 24 GB card with room to spare
    eight = memory_need(shape, config.replace(quantization="8bit"), 2048, weight_bytes=2, on_gpu=True)
    assert eight.weights == quantized * 1 + rest_bytes  # LLM.int8: one byte per weight


def test_memory_advice_offers_a_4bit_base_when_only_that_fits(ws, tmp_path):
    _dataset(ws, train_tokens=2_000_000)
    model = _model_dir(tmp_path, LLAMA_2_13B)
    # 13B in bf16 is 26 GB of weights: no batch size or checkpointing fits 24 GB.
    est = estimate(ws, "support-v1", preset="balanced", overrides=("batch_size=1", "max_seq_length=1024"),
                   base_model=model, gpu_type="A10G", gpus=1)
    assert not est.fits_in_memory
    advice = est.memory_advice
    assert "--set quantization=4bit" in advice and "--set batch_size" not in advice
    quantized = estimate(ws, "support-v1", preset="balanced",
                         overrides=("batch_size=1", "max_seq_length=1024", "quantization=4bit", "gradient_checkpointing=true"),
                         base_model=model, gpu_type="A10G", gpus=1)
    assert quantized.fits_in_memory
    assert quantized.to_json()["memory"]["weights_gb"] < 8


# ---------------------------------------------------------------- refused before anything is written


@pytest.mark.usefixtures("chat")
def test_quantization_on_a_cpu_host_is_refused_before_anything_is_written(cli, brightrun_home):
    out = train(cli, "--set", "quantization=4bit")
    assert out.exit_code == 2
    assert out.stderr.count("\n") == 1 and "quantization=4bit needs a CUDA GPU" in out.stderr
    assert_nothing_created(cli, brightrun_home)


@pytest.mark.usefixtures("chat")
def test_quantization_without_bitsandbytes_or_under_fsdp_is_refused(cli, brightrun_home, tmp_path, monkeypatch):
    from brightrun_cli.generation import quantization

    fake_nvidia_smi(tmp_path, ["NVIDIA A100-SXM4-40GB, 40960", "NVIDIA A100-SXM4-40GB, 40960"], monkeypatch)
    monkeypatch.setattr(quantization, "bitsandbytes_installed", lambda: False)
    out = train(cli, "--set", "quantization=8bit")
    assert out.exit_code == 2 and "needs bitsandbytes, which is not installed here" in out.stderr
    assert "pip install bitsandbytes" in out.stderr
    monkeypatch.setattr(quantization, "bitsandbytes_installed", lambda: True)
    fsdp = write(tmp_path / "fsdp.yaml", FSDP2)
    out = train(cli, "--set", "quantization=4bit", "--accelerate-config", str(fsdp))
    assert out.exit_code == 2 and "one GPU or under DDP only" in out.stderr
    assert_nothing_created(cli, brightrun_home)
    planned = train(cli, "--set", "quantization=4bit", "--set", "use_dora=true", "--dry-run", "--json")
    assert planned.exit_code == 0, planned.stderr
    hyperparameters = json.loads(planned.stdout)["spec"]["hyperparameters"]
    assert (hyperparameters["quantization"], hyperparameters["use_dora"], hyperparameters["use_rslora"]) == ("4bit", True, False)


@pytest.mark.usefixtures("chat")
def test_quantization_on_an_ssh_host_whose_check_found_no_bitsandbytes_is_refused(cli, brightrun_home):
    from brightrun_cli.registry import hosts as host_rows

    ws = Workspace.open(brightrun_home)
    host = hosts_service.add_host(ws, "gpu1", "me@gpu1", gpus=1, gpu_type="A100-40GB", connect=False)
    with ws.registry.write() as tx:
        host_rows.update(tx, host.id, last_check={"packages": {"torch": "2.9.0", "bitsandbytes": None}})
    out = train(cli, "--host", "gpu1", "--set", "quantization=4bit")
    assert out.exit_code == 2 and "'hosts check gpu1' found missing" in out.stderr
    assert_nothing_created(cli, brightrun_home)


def test_the_trainer_refuses_quantization_without_cuda_before_loading_anything(tmp_path):
    spec = write_run_dir(tmp_path, quantization="4bit")
    assert trainer_main([str(spec)]) == 2
    res = result(tmp_path)
    assert res["status"] == "failed" and "quantization = 4bit needs a CUDA GPU" in res["error"]
    assert not (tmp_path / "metrics.jsonl").exists() or not (tmp_path / "metrics.jsonl").read_text()


def test_the_trainer_refuses_quantization_under_a_sharded_engine(tmp_path):
    from brightrun_cli.trainer.spec import SpecError, load_spec

    spec = write_run_dir(tmp_path, quantization="4bit", accelerate_config="accelerate_config.yaml")
    (tmp_path / "accelerate_config.yaml").write_text(FSDP2)
    with pytest.raises(SpecError, match="one GPU or under DDP only"):
        load_spec(spec)
    bad = write_run_dir(tmp_path / "bad", quantization="3bit")
    with pytest.raises(SpecError, match="quantization must be one of none, 4bit, 8bit"):
        load_spec(bad)


# ---------------------------------------------------------------- hosts check


def test_hosts_check_reports_bitsandbytes_as_optional(brightrun_home, monkeypatch):
    ws = Workspace.open(brightrun_home)
    found = Probe(python="/usr/bin/python3", python_version="3.11.2", trainer="ok", tools={"rsync": True, "setsid": True},
                  packages={**{name: "1.0" for name in hosts_service.REQUIRED_PACKAGES}, "bitsandbytes": None})
    from brightrun_cli.services import host_check

    monkeypatch.setattr(host_check, "probe_local", lambda packages: found)
    local = host_check.check_host(ws, "local")
    assert local.ok and local.packages["bitsandbytes"] is None and not local.problems
    assert "bitsandbytes" in hosts_service.PROBED_PACKAGES
    remote = hosts_service.HostCheck(name="gpu1")
    row = HostRow(id="h", name="gpu1", kind="ssh", ssh_host="gpu1", ssh_user=None, ssh_port=None, identity_file=None,
                  python=None, workdir=None, gpus=1, gpu_type="cpu", options=None, last_check=None, last_checked_at=None,
                  created_at=None, updated_at=None)
    hosts_service.judge_probe(remote, row, "python3", found)
    assert remote.problems == [] and remote.packages["bitsandbytes"] is None


# ---------------------------------------------------------------- the fused loss


def test_chunked_linear_cross_entropy_equals_the_plain_loss_and_its_gradient(monkeypatch):
    import torch

    from brightrun_cli.trainer import loss

    monkeypatch.setattr(loss, "CHUNK_LOGITS", 7 * 50)  # 7 tokens a chunk: several chunks, a ragged last one
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(23, 16, generator=gen, requires_grad=True)
    weight = torch.randn(50, 16, generator=gen)
    targets = torch.randint(0, 50, (23,), generator=gen)
    fused = loss.linear_cross_entropy_sum(hidden, weight, targets)
    fused.backward(torch.tensor(0.5))
    got = hidden.grad.clone()
    hidden.grad = None
    plain = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    plain.backward(torch.tensor(0.5))
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(got, hidden.grad, rtol=1e-5, atol=1e-6)


def test_the_trainer_loss_with_the_fused_head_is_the_plain_loss_with_the_same_gradients(tmp_path):
    import torch
    from accelerate import Accelerator

    from brightrun_cli.builtin import resolve_base_model
    from brightrun_cli.trainer import loop
    from brightrun_cli.trainer.data import collate, ensure_chat_template, tokenize_file
    from brightrun_cli.trainer.spec import load_spec
    from transformers import AutoTokenizer

    spec = load_spec(write_run_dir(tmp_path, target_modules="all-linear"))
    path = resolve_base_model("builtin:tiny")
    tokenizer = AutoTokenizer.from_pretrained(path)
    ensure_chat_template(tokenizer)
    examples, _ = tokenize_file(tokenizer, spec.train_file, 512, True)
    batch = collate(examples[:6], True, tokenizer.pad_token_id)
    model = loop.attach_lora(spec, loop.load_base(spec, path, "fp32", _Log()), _Log())
    assert loop.fused_loss.frozen(loop.fused_loss.fusable_head(model))
    acc = Accelerator(cpu=True)
    results = []
    for head in (None, model.get_output_embeddings()):
        model.zero_grad()
        value, count = loop.batch_loss_sum(acc, batch, model, head)
        value.backward()
        results.append((value.detach(), count, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (plain, n_plain, grads_plain), (fused, n_fused, grads_fused) = results
    assert n_plain == n_fused > 0
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_fused[name], grad, rtol=1e-3, atol=1e-5)


class _Log:
    def info(self, *args) -> None:
        pass


def test_the_trainer_fuses_the_head_by_default_and_both_losses_agree(tmp_path):
    losses = {}
    for fused in (True, False):
        run = tmp_path / str(fused)
        spec = write_run_dir(run, fused_cross_entropy=fused, max_steps=2, validation=None)
        assert trainer_main([str(spec)]) == 0
        log = (run / "trainer.log").read_text()
        assert ("output layer fused with cross-entropy (torch chunks)" in log) is fused
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses[fused] = [m["training_loss"] for m in lines if m["split"] == "train"] + [
            m["validation_loss"] for m in lines if m["split"] == "validation"]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


KEEP_OUT = """
import sys
from brightrun_cli.errors import own_the_process
from brightrun_cli.generation.quantization import keep_bitsandbytes_out
if sys.argv[1] == "owned":
    own_the_process()
keep_bitsandbytes_out()
import peft, transformers.utils.import_utils as hf
print(sys.modules.get("bitsandbytes", "absent") is None, hf.is_bitsandbytes_available())
"""


@pytest.mark.parametrize("owned,kept_out", [("owned", True), ("not-owned", False)])
def test_a_process_that_loads_no_quantised_model_keeps_bitsandbytes_out_only_when_it_owns_the_process(owned, kept_out):
    """peft imports bitsandbytes eagerly where it is installed (1-2 s; on AVX512-BF16 CPUs a
    kernel fetched from the Hub). The brightrun executable and the trainer keep it out when
    nothing will be quantised; code running inside another program (here: not owned) does not."""
    import subprocess
    import sys

    from brightrun_cli.generation.quantization import bitsandbytes_installed

    if not bitsandbytes_installed():
        pytest.skip("bitsandbytes is not installed: nothing to keep out")
    proc = subprocess.run([sys.executable, "-c", KEEP_OUT, owned], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == (["True", "False"] if kept_out else ["False", "True"])
