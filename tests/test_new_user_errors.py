"""Bad input a new user gives: one `error:` line naming what, why and what to do; exit 2."""

from __future__ import annotations

import errno
import json

import pytest

from brightrun_cli.workspace import Workspace
from jobs_helpers import dataset_row
from test_models_cli import make_model
from watch_sim import running_job


def one_line_usage_error(result, *needles: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


# 1 -------------------------------------------------------------- an empty --home

@pytest.mark.parametrize("argv", [("--home", "", "status", "--json"), ("status", "--home"), ("--home=", "jobs", "list")])
def test_an_empty_home_is_refused_not_read_as_the_current_directory(cli, argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_usage_error(cli(*argv), "empty --home")
    assert list(tmp_path.iterdir()) == []


# 2 -------------------------------------------------------------- output paths

def test_output_paths_under_a_file_or_in_a_missing_directory_are_one_line(cli, brightrun_home, tmp_path):
    model = make_model(brightrun_home, name="m1", score=3, cost=1.0)
    job_id = running_job(Workspace.open(), done=5)
    blocker = tmp_path / "fileout"
    blocker.write_text("x")
    one_line_usage_error(cli("models", "export", model.id, str(blocker / "sub")), str(blocker), "not a directory")
    one_line_usage_error(cli("models", "merge", model.id, str(blocker / "sub")), str(blocker), "not a directory")
    one_line_usage_error(cli("jobs", "report", job_id, "--out", str(blocker / "r.html")), "not a directory")
    one_line_usage_error(cli("jobs", "plot", job_id, "--out", str(blocker / "r.png")), "not a directory")
    missing = tmp_path / "missing" / "deeper"
    for argv in (("jobs", "report", job_id, "--out", str(missing / "r.html")), ("jobs", "plot", job_id, "--out", str(missing / "r.png")),
                 ("models", "export", model.id, str(missing / "x"))):
        one_line_usage_error(cli(*argv), "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fileout"]  # nothing created, nothing half-written


def test_an_unwritable_path_named_by_the_user_is_a_usage_error_naming_it(tmp_path):
    from brightrun_cli.errors import UsageError
    from brightrun_cli.services.output_files import user_path, write_atomically

    for code in (errno.EROFS, errno.EACCES):
        with pytest.raises(UsageError, match=r"cannot write --out .*r\.html: Read-only|cannot write --out .*r\.html: Permission"):
            with user_path(tmp_path / "r.html", "--out"):
                raise OSError(code, "Read-only file system" if code == errno.EROFS else "Permission denied")
    with pytest.raises(OSError) as full:  # a full disk stays what it is (mapped at the top)
        with user_path(tmp_path / "r.html", "--out"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert not isinstance(full.value, UsageError)

    def fail(handle):
        raise OSError(errno.EACCES, "Permission denied")

    with pytest.raises(OSError):
        write_atomically(tmp_path / "r.html", fail)
    assert list(tmp_path.iterdir()) == []


def test_export_to_a_bucket_without_credentials_says_so(cli, brightrun_home, monkeypatch):
    from brightrun_cli.services import models as models_service

    class NoCredentialsError(Exception):
        pass

    class FS:
        def exists(self, path):
            raise NoCredentialsError("Unable to locate credentials")

    model = make_model(brightrun_home, name="m2", score=3, cost=1.0)
    monkeypatch.setattr(models_service, "_open_target", lambda target: (FS(), "nobucket/x"))
    one_line_usage_error(cli("models", "export", model.id, "s3://nobucket/x"), "no credentials", "AWS_ACCESS_KEY_ID")


# 3 / 7 -------------------------------------------------------------- numbers out of range

@pytest.mark.parametrize("argv", [
    ("jobs", "list", "--limit", "99999999999999999999"),
    ("dataset", "list", "--limit", "99999999999999999999"),
    ("models", "list", "--limit", "99999999999999999999"),
    ("notifications", "--limit", "99999999999999999999"),
    ("models", "try", "m", "hi", "--seed", "99999999999999999999"),
])
def test_huge_numbers_name_the_allowed_range(cli, argv):
    one_line_usage_error(cli(*argv), "99999999999999999999", "range")


def test_a_huge_prune_age_names_the_limit(cli):
    one_line_usage_error(cli("prune", "--older-than", "999999999999w"), "too long", "36500 days")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_budgets_are_refused(cli, value):
    dataset_row(Workspace.open(), "d1")
    one_line_usage_error(cli("train", "-d", "d1", "--dry-run", "--json", "--max-cost", value), "--max-cost", "not a finite number")


# 4 -------------------------------------------------------------- notifications --json lists all

def test_notifications_json_lists_every_row_unless_limited(cli):
    from brightrun_cli.services.notifications import notify

    ws = Workspace.open()
    with ws.registry.write() as tx:
        for n in range(41):
            notify(tx, "job_completed", f"job {n}", f"job {n} done")
    assert len(json.loads(cli("notifications", "--json").stdout)) == 41
    assert len(json.loads(cli("notifications", "--json", "--limit", "5").stdout)) == 5
    table = cli("notifications").stdout
    assert table.count("job_completed") == 20


# 5 -------------------------------------------------------------- tables

def test_tables_for_a_program_are_not_wrapped(cli, brightrun_home, monkeypatch):
    monkeypatch.delenv("COLUMNS")
    make_model(brightrun_home, name="support-chats-v2-2026-12-05-a-rather-long-model-name", score=3, cost=1.0)
    out = cli("models", "list").stdout
    assert "support-chats-v2-2026-12-05-a-rather-long-model-name" in out
    assert "builtin:tiny\n" in cli("presets", "list").stdout


def test_a_narrow_terminal_never_cuts_a_value_in_two(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    out = cli("gpus").stdout
    assert "A100-80GB" in out and "RTX-4090" in out


# 6 -------------------------------------------------------------- presets

def test_a_broken_preset_file_is_a_warning_not_the_end_of_the_list(cli, brightrun_home):
    presets = brightrun_home / "presets"
    presets.mkdir()
    (presets / "bad.toml").write_text("x = [\n")
    (presets / "unknown.toml").write_text("bogus = 1\n")
    (presets / "tiny.toml").write_text("learning_rate = 0.001\n")
    (presets / "my preset.toml").write_text("learning_rate = 0.001\n")
    result = cli("presets", "list")
    assert result.exit_code == 0, result.stderr
    assert "balanced" in result.stdout and "yours, overrides shipped" in result.stdout
    warnings = result.stderr.splitlines()
    assert len(warnings) == 3 and all(w.startswith("warning: ") for w in warnings)
    assert any("bad.toml" in w for w in warnings) and any("bogus" in w for w in warnings)
    assert any("my preset.toml" in w and "rename" in w for w in warnings)
    listed = json.loads(cli("presets", "list", "--json").stdout)
    assert sum(1 for p in listed if "error" in p) == 3
    assert [p["overrides_shipped"] for p in listed if p.get("name") == "tiny"] == [True]


def test_a_preset_name_no_file_could_have_gets_no_put_it_there_hint():
    from brightrun_cli.errors import NotFoundError
    from brightrun_cli.services.presets import get_preset

    with pytest.raises(NotFoundError) as exc:
        get_preset(Workspace.open(), "my preset")
    assert "put my preset.toml" not in str(exc.value) and "preset names are" in str(exc.value)


# 8 -------------------------------------------------------------- names and id prefixes

@pytest.mark.parametrize("name, needle", [("01m92hq4", "look like an id"), ("-dash", "start with '-'"),
                                          ("a\u200bb", "U+200B"), ("evil\u202etxt", "U+202E")])
def test_names_a_lookup_would_misread_are_refused(cli, tmp_path, name, needle):
    data = tmp_path / "small.jsonl"
    data.write_text('{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]}\n')
    one_line_usage_error(cli("dataset", "add", str(data), f"--name={name}"), needle)
    assert json.loads(cli("dataset", "list", "--json").stdout) == []


def test_a_too_short_id_prefix_says_how_many_characters_it_takes(cli):
    ws = Workspace.open()
    job_id = running_job(ws, done=1)
    one_line_usage_error(cli("jobs", "show", job_id[:2]), "too short", "at least 4")
    one_line_usage_error(cli("jobs", "show", "zz"), "no job matches")


# 10 / 11 -------------------------------------------------------------- config and small ones

def test_config_errors_name_the_real_key(cli, brightrun_home):
    (brightrun_home / "config.toml").write_text("[trackers.mlflow]\ntracking_uri = 5\n")
    one_line_usage_error(cli("jobs", "list"), "trackers.mlflow.tracking_uri")
    (brightrun_home / "config.toml").write_text("[trackers.foo]\nx = 1\n")
    one_line_usage_error(cli("jobs", "list"), "unknown tracker 'foo'", "known: ")
    for hook in ("5", "[1, 2]", "{ cmd = 'x' }"):  # the hint shows the string form the README uses
        (brightrun_home / "config.toml").write_text(f"notification_hook = {hook}\n")
        one_line_usage_error(cli("jobs", "list"), "key 'notification_hook': expected a command", 'notification_hook = "')


def test_an_enum_setting_lists_its_values():
    from brightrun_cli.errors import UsageError
    from brightrun_cli.services.presets import resolve_config

    with pytest.raises(UsageError, match="precision must be one of auto, bf16, fp16, fp32"):
        resolve_config(Workspace.open(), "tiny", ["precision=fp8"])


def test_report_to_none_cannot_be_combined():
    from brightrun_cli.errors import UsageError
    from brightrun_cli.services.trackers import parse_report_to

    assert parse_report_to("none", ["wandb"]) == []
    with pytest.raises(UsageError, match="'none' means no trackers and cannot be combined"):
        parse_report_to("none,wandb", [])


def test_a_model_without_an_eval_names_itself_in_the_hint(cli, brightrun_home):
    model = make_model(brightrun_home, name="m3", score=3, cost=1.0)
    out = cli("models", "show", model.id).stdout
    assert f"brightrun models eval {model.id[:12]}" in out and "eval MODEL" not in out
