"""Every test gets its own brightrun home: no test touches a real ~/.brightrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def brightrun_home(tmp_path_factory, monkeypatch) -> Path:
    home = tmp_path_factory.mktemp("brightrun-home")
    monkeypatch.setenv("BRIGHTRUN_HOME", str(home))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv("BRIGHTRUN_DEBUG", raising=False)
    return home


def invoke_cli(*args: str, input: str | None = None) -> Result:
    """Run `brightrun ARGS` in-process as the executable does (cli/entry.py: the commands'
    declarations where they read the line, else typer) -> Result (exit_code, stdout, stderr)."""
    from brightrun_cli.cli.entry import run

    runner = CliRunner()
    code, exception = 0, None
    with runner.isolation(input=input) as (stdout, stderr, output):
        try:
            run(list(args))
        except SystemExit as exc:
            code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
            exception = exc if code else None
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            streams = stdout.getvalue(), stderr.getvalue(), output.getvalue()
    return Result(runner=runner, stdout_bytes=streams[0], stderr_bytes=streams[1], output_bytes=streams[2],
                  return_value=None, exit_code=code, exception=exception)


@pytest.fixture
def cli():
    """Invoke the CLI in-process: cli("dataset", "list", "--json") -> Result (exit_code, stdout, stderr)."""
    return invoke_cli


def run_brightrun(*args: str, env: dict[str, str] | None = None, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m brightrun_cli ARGS` as a real subprocess (what a shell user gets)."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), full_env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "brightrun_cli", *args],
        env=full_env, capture_output=True, text=True, timeout=timeout, **kwargs,
    )


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto in server mode) on a free loopback port, for the whole session.

    Yields its endpoint URL; fake credentials are put in the environment so s3fs/boto
    (in this process and in subprocesses) sign requests without touching real ones.
    Tests create their own uniquely named buckets.
    """
    import socket

    from moto.server import ThreadedMotoServer

    fake = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {key: os.environ.get(key) for key in fake}
    os.environ.update(fake)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# Under pytest-xdist (scripts/test.sh runs the suite on two workers):
# - each worker gets its own share of the CPUs. The trainer sizes its thread pool from the
#   CPUs it may use (trainer/loop.py), so two workers' trainers each take one share instead
#   of both taking every core and spinning against each other (that made the suite slower
#   in parallel than in series);
# - the tests that share a session-wide resource run on one worker: one Slurm cluster, one
#   GGUF conversion.
_SHARED_SESSION_FIXTURES = {"slurm_cluster": "slurm", "smollm2": "smollm2"}


def pytest_configure(config):
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker.startswith("gw") and count > 1 and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= count:
            os.sched_setaffinity(0, cpus[int(worker[2:]) % count::count])


def pytest_collection_modifyitems(config, items):
    for item in items:
        for fixture, group in _SHARED_SESSION_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(group))
                break
