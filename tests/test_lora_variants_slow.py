"""DoRA, rsLoRA and QLoRA adapters trained for real on builtin:tiny (CPU): each saves a standard
peft adapter that loads with plain peft in a fresh process and merges (`models merge`) into
a plain model whose logits are base + adapter's. QLoRA's 4-bit base runs on bitsandbytes' CPU
kernels through tests/qlora_cpu.py (brightrun itself refuses quantization without CUDA)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_brightrun
from test_models import EXAMPLE, HYPERPARAMETERS, N_TRAIN, N_VALIDATION, _env, completed_job, fresh_logits

pytestmark = pytest.mark.slow
QLORA_CPU = str(Path(__file__).with_name("qlora_cpu.py"))


def train_variant(run: Path, program: list[str], **hyperparameters) -> Path:
    lines = EXAMPLE.read_text().splitlines()
    run.mkdir(parents=True)
    (run / "train.jsonl").write_text("\n".join(lines[:N_TRAIN]) + "\n")
    (run / "validation.jsonl").write_text("\n".join(lines[-N_VALIDATION:]) + "\n")
    spec = {
        "version": 1, "job_id": "01variantrunfortests00000", "base_model": "builtin:tiny",
        "train_file": "train.jsonl", "validation_file": "validation.jsonl", "output_dir": ".", "seed": 42,
        "hyperparameters": {**HYPERPARAMETERS, **hyperparameters}, "logging_steps": 1, "save_steps": 0,
        "max_steps": None, "resume": False, "eval": {"limit": 4, "max_new_tokens": 16},
    }
    (run / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run([*program, str(run / "spec.json")], env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


VARIANTS = {
    "dora": ([sys.executable, "-m", "brightrun_cli.trainer"], {"use_dora": True}),
    "rslora": ([sys.executable, "-m", "brightrun_cli.trainer"], {"use_rslora": True}),
    "qlora-4bit": ([sys.executable, QLORA_CPU], {"quantization": "4bit"}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_trains_saves_a_plain_peft_adapter_and_merges_to_the_same_logits(variant, brightrun_home, tmp_path):
    import torch
    from safetensors.torch import load_file

    from brightrun_cli.builtin import resolve_base_model
    from brightrun_cli.services.artifacts import create_artifact
    from brightrun_cli.workspace import Workspace

    program, hyperparameters = VARIANTS[variant]
    run = train_variant(tmp_path / "run", program, **hyperparameters)
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "completed"
    assert result["final_validation_loss"] < result["base_validation_loss"]
    config = json.loads((run / "final" / "adapter_config.json").read_text())
    weights = load_file(str(run / "final" / "adapter_model.safetensors"))
    log = (run / "trainer.log").read_text()
    if variant == "dora":
        assert config["use_dora"] is True and "DoRA" in log
        assert any("lora_magnitude_vector" in key for key in weights)  # the trained magnitudes are saved
    if variant == "rslora":
        assert config["use_rslora"] is True and "rsLoRA" in log
    if variant.startswith("qlora"):
        assert "quantization=4bit (bitsandbytes)" in log
        assert all(t.dtype == torch.float32 for t in weights.values())  # a standard adapter, fp32 weights
        from brightrun_cli.generation.engine import load_chat_model
        from brightrun_cli.generation.quantization import trained_quantization

        # `models try` and later evals know what base the adapter was fitted to; without CUDA
        # they load the unquantised base (as merge does) and say so.
        assert trained_quantization(run / "final") == "4bit"
        assert load_chat_model("builtin:tiny", run / "final").quantization == "none"
    # The answer eval at the end ran on the model as trained (quantised for QLoRA).
    assert json.loads((run / "final" / "eval_summary.json").read_text())["status"] == "completed"

    ws = Workspace.open(brightrun_home)
    artifact = create_artifact(ws, completed_job(brightrun_home, run))
    out = tmp_path / "merged"
    merged_run = run_brightrun("models", "merge", artifact.id, str(out), timeout=300)
    assert merged_run.returncode == 0, merged_run.stderr
    stored = brightrun_home / "storage" / artifact.storage_path
    # Plain peft on the unquantised base (the model card's recipe), the merged model, the base alone.
    merged, with_adapter, base = fresh_logits(("model", out), ("adapter", stored), ("model", resolve_base_model("builtin:tiny")))
    torch.testing.assert_close(merged, with_adapter, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(with_adapter, base, atol=1e-3)  # the adapter changed the model


def test_qlora_under_ddp_on_two_processes_learns_the_one_process_adapter(tmp_path):
    """QLoRA with DDP: each process holds the whole 4-bit base, the adapter's gradients are
    averaged; 2 gloo processes (each with half of every step's conversations) end with the
    adapter one process makes from the same steps."""
    from safetensors.torch import load_file

    from brightrun_cli.runners.accelerate import accelerate_argv
    from test_trainer import write_run_dir
    from test_trainer_slow import _free_port, split_examples, trainer_env

    train, held_out = split_examples()
    runs = {}
    for processes in (1, 2):
        runs[processes] = tmp_path / str(processes)
        spec = write_run_dir(runs[processes], conversations=train[:32], validation=held_out[:8], num_epochs=1,
                             batch_size=8 // processes, quantization="4bit", eval=None)
        argv = accelerate_argv(str(spec), num_processes=processes, main_process_port=_free_port())
        at = argv.index("-m", 3)
        argv[at:at + 2] = [QLORA_CPU]  # the trainer module, with the CUDA-only check lifted
        proc = subprocess.run(argv, env={**trainer_env(), "MASTER_ADDR": "127.0.0.1"}, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads((runs[processes] / "result.json").read_text())["steps"] == 4
    log = (runs[2] / "trainer.log").read_text()
    assert "2 process(es)" in log and "quantization=4bit (bitsandbytes)" in log
    one, two = (load_file(str(runs[n] / "final" / "adapter_model.safetensors")) for n in (1, 2))
    assert set(one) == set(two)
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-4
