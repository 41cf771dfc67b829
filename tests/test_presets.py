"""Presets as data: every shipped preset loads with the reference's values, overrides
and config files are validated with errors that name the flag and the allowed range."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brightrun_cli.errors import UsageError
from brightrun_cli.presets.schema import HYPERPARAMETER_KEYS
from brightrun_cli.services.presets import get_preset, list_presets, resolve_config
from brightrun_cli.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


def _architecture_hyperparameter_keys() -> list[str]:
    """The keys of the spec example in docs/ARCHITECTURE.md (the trainer's contract)."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    block = text.split("```json", 1)[1].split("```", 1)[0]
    return list(json.loads(block)["hyperparameters"])


# (learning_rate, batch_size, num_epochs, lora_rank, lora_alpha, lora_dropout) from the reference.
REFERENCE = {
    "fast": (1e-4, 8, 1, 8, 16, 0.05),
    "balanced": (5e-5, 4, 3, 16, 32, 0.1),
    "quality": (3e-5, 2, 5, 32, 64, 0.1),
    "conservative": (1e-4, 4, 3, 8, 16, 0.05),
    "aggressive": (3e-4, 16, 10, 32, 64, 0.1),
}


@pytest.fixture
def ws() -> Workspace:
    return Workspace.open()


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_shipped_preset_has_reference_values(ws, name):
    config = get_preset(ws, name).config
    got = (config.learning_rate, config.batch_size, config.num_epochs, config.lora_rank, config.lora_alpha, config.lora_dropout)
    assert got == REFERENCE[name]
    assert list(config.hyperparameters()) == _architecture_hyperparameter_keys()


def test_tiny_preset_targets_the_builtin_model_on_cpu(ws):
    config = get_preset(ws, "tiny").config
    assert (config.base_model, config.gpu_type, config.gpus) == ("builtin:tiny", "cpu", 1)
    assert list(config.hyperparameters()) == list(HYPERPARAMETER_KEYS) == _architecture_hyperparameter_keys()


def test_qlora_preset_is_a_4bit_base_with_lora_on_every_linear_layer(ws):
    config = get_preset(ws, "qlora").config
    assert (config.quantization, config.target_modules, config.gradient_checkpointing) == ("4bit", "all-linear", True)
    assert (config.lora_rank, config.lora_alpha, config.learning_rate) == (64, 16, 2e-4)  # the QLoRA paper's
    assert config.gpu_type is None  # any CUDA host: train refuses it on a CPU one
    hyperparameters = config.hyperparameters()
    assert hyperparameters["quantization"] == "4bit" and list(hyperparameters) == _architecture_hyperparameter_keys()


def test_lora_variants_and_quantization_come_from_set_and_presets(ws, brightrun_home):
    config = resolve_config(ws, "balanced", ["use_dora=true", "use_rslora=true", "quantization=8bit"]).config
    assert (config.use_dora, config.use_rslora, config.quantization) == (True, True, "8bit")
    assert {k: config.hyperparameters()[k] for k in ("use_dora", "use_rslora", "quantization")} == {
        "use_dora": True, "use_rslora": True, "quantization": "8bit"}
    defaults = resolve_config(ws, "balanced").config
    assert (defaults.use_dora, defaults.use_rslora, defaults.quantization) == (False, False, "none")
    (brightrun_home / "presets").mkdir()
    (brightrun_home / "presets" / "dora.toml").write_text('description = "DoRA"\nuse_dora = true\nlora_rank = 8\n')
    assert get_preset(ws, "dora").config.use_dora is True
    with pytest.raises(UsageError, match="quantization"):
        resolve_config(ws, "balanced", ["quantization=2bit"])


def test_every_shipped_file_is_listed_and_the_root_presets_dir_is_the_same_files(ws):
    names = {p.name for p in list_presets(ws)}
    assert names == set(REFERENCE) | {"tiny", "qlora"}
    assert {p.stem for p in (REPO / "presets").glob("*.toml")} == names


def test_overrides_make_a_custom_preset_and_flags_win(ws):
    resolved = resolve_config(ws, "balanced", ["lora_rank=32", "target_modules=q_proj,v_proj", "packing=false"],
                              base_model="builtin:tiny", gpu_type="a100-80gb", gpus=2)
    config = resolved.config
    assert resolved.preset_id == "custom" and resolved.base_preset == "balanced"
    assert (config.lora_rank, config.target_modules, config.packing) == (32, ["q_proj", "v_proj"], False)
    assert (config.base_model, config.gpu_type, config.gpus) == ("builtin:tiny", "A100-80GB", 2)
    assert resolve_config(ws, "fast", ["lora_rank=8"]).preset_id == "fast"  # same value: still the preset


@pytest.mark.parametrize(
    ("overrides", "kwargs", "expected"),
    [
        (["batch_size=65"], {}, "--set batch_size=65: batch_size must be in 1..64"),
        (["num_epochs=0"], {}, "--set num_epochs=0: num_epochs must be in 1..20"),
        (["learning_rate=0.01"], {}, "--set learning_rate=0.01: learning_rate must be in 1e-05..0.001"),
        (["lora_rank=2"], {}, "--set lora_rank=2: lora_rank must be in 4..128"),
        ([], {"gpus": 9}, "--gpus 9: gpus must be in 1..8"),
        (["epochs=3"], {}, "unknown field 'epochs'"),
        (["lora_rank"], {}, "is not key=value"),
    ],
)
def test_bad_overrides_name_the_flag_and_range(ws, overrides, kwargs, expected):
    with pytest.raises(UsageError) as info:
        resolve_config(ws, "balanced", overrides, **kwargs)
    assert expected in str(info.value)


def test_unknown_gpu_and_preset_are_usage_errors(ws):
    with pytest.raises(UsageError, match="unknown GPU type 'T4'"):
        resolve_config(ws, "fast", gpu_type="T4")
    with pytest.raises(UsageError, match="unknown preset 'nope'"):
        resolve_config(ws, "nope")


@pytest.mark.parametrize("suffix", [".toml", ".json", ".yaml"])
def test_config_file_in_each_format_applies_over_the_preset(ws, tmp_path, suffix):
    path = tmp_path / f"run{suffix}"
    path.write_text({".toml": 'lora_rank = 64\ntarget_modules = ["q_proj"]\n',
                     ".json": '{"lora_rank": 64, "target_modules": ["q_proj"]}',
                     ".yaml": "lora_rank: 64\ntarget_modules: [q_proj]\n"}[suffix])
    config = resolve_config(ws, "fast", ["lora_alpha=128"], config_file=path).config
    assert (config.lora_rank, config.target_modules, config.lora_alpha, config.num_epochs) == (64, ["q_proj"], 128, 1)


def test_config_file_error_names_the_file_and_field(ws, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("lora_rank = 500\n")
    with pytest.raises(UsageError, match=r"--config .*bad.toml: field 'lora_rank': lora_rank must be in 4..128"):
        resolve_config(ws, "fast", config_file=path)


def test_user_preset_in_home_is_found_and_defaults_fill_the_rest(ws, brightrun_home):
    (brightrun_home / "presets").mkdir()
    (brightrun_home / "presets" / "mine.toml").write_text('description = "mine"\nlora_rank = 24\nbase_model = "builtin:tiny"\n')
    preset = get_preset(ws, "mine")
    assert (preset.source, preset.config.lora_rank, preset.config.learning_rate) == ("user", 24, 2e-4)
    assert resolve_config(ws, "mine").preset_id == "mine"


def test_default_base_model_from_config_toml_yields_to_the_preset(brightrun_home):
    (brightrun_home / "config.toml").write_text('default_base_model = "/models/x"\n')
    ws = Workspace.open()
    assert resolve_config(ws, "balanced").config.base_model == "/models/x"
    assert resolve_config(ws, "tiny").config.base_model == "builtin:tiny"
    assert resolve_config(ws, "tiny", base_model="/models/y").config.base_model == "/models/y"


def test_presets_cli_list_show_validate(cli, tmp_path):
    result = cli("presets", "list", "--json")
    assert result.exit_code == 0
    assert {p["name"] for p in json.loads(result.stdout)} >= set(REFERENCE)
    shown = cli("presets", "show", "quality", "--json")
    assert json.loads(shown.stdout)["config"]["lora_rank"] == 32
    human = cli("presets", "show", "balanced")
    assert "lora_rank" in human.stdout and "4..128" in human.stdout
    good = tmp_path / "ok.yaml"
    good.write_text("lora_rank: 8\n")
    assert cli("presets", "validate", str(good)).exit_code == 0
    bad = tmp_path / "bad.toml"
    bad.write_text("batch_size = 100\n")
    result = cli("presets", "validate", str(bad))
    assert result.exit_code == 2
    assert "batch_size must be in 1..64" in result.stderr
    assert cli("presets", "show", "nope").exit_code == 2
