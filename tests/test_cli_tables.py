"""List tables at an 80-column terminal: nothing a user types next is cut off."""

from brightrun_cli.registry.tables import Dataset
from brightrun_cli.workspace import Workspace


def test_dataset_list_at_80_columns_keeps_ids_and_long_names_whole(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    ws = Workspace.open()
    name = "customer-support-conversations-2026-q4"
    with ws.registry.write() as session:
        row = Dataset(name=name, status="ready", storage_path="datasets/x/data.jsonl", file_name="d.jsonl",
                      file_size=123_456_789, total_conversations=123_456, total_training_pairs=200_000,
                      total_validation_pairs=20_000, total_tokens=98_765_432, token_count_method="tokenizer:x")
        session.add(row)
    result = cli("dataset", "list")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    # A name folds only after its separators, never inside a part: the line may then run
    # past 80 columns rather than cut "conversations-" in two.
    assert all(len(line.rstrip()) <= 80 + len("conversations-") for line in lines)
    assert "…" not in result.stdout
    assert row.id[:12] in result.stdout
    name_column = "".join(line[13:].split(" ")[0] for line in lines[1:])  # a long name folds onto more lines
    assert name_column == name
    assert all(piece.endswith("-") for piece in (line[13:].split(" ")[0] for line in lines[1:-1]))


def test_presets_list_at_80_columns_shows_every_name(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = cli("presets", "list")
    assert result.exit_code == 0 and "…" not in result.stdout
    for name in ("aggressive", "balanced", "conservative", "fast", "quality", "tiny"):
        assert f" {name} " in result.stdout
