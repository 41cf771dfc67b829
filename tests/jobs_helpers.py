"""Shared by the jobs tests: registry rows made directly, and a ready dataset made by `dataset add`."""

from __future__ import annotations

import json
from pathlib import Path

from brightrun_cli.registry.tables import Dataset, TrainingJob
from brightrun_cli.workspace import Workspace


def dataset_row(ws: Workspace, name: str = "d1", status: str = "ready") -> Dataset:
    row = Dataset(name=name, status=status, storage_path=f"datasets/{name}/data.jsonl", file_name="d.jsonl", file_size=1,
                  training_ready=status == "ready", total_training_pairs=10, error_message=None if status == "ready" else "bad line 3")
    with ws.registry.write() as session:
        session.add(row)
    return row


def job_row(ws: Workspace, dataset: Dataset, **values) -> TrainingJob:
    fields = dict(dataset_id=dataset.id, preset_id="tiny", base_model="builtin:tiny", hyperparameters={"num_epochs": 1},
                  gpu_config={"type": "cpu", "count": 1, "hourly_rate": 3.6}, hosts=["local"], total_epochs=1,
                  estimated_total_cost=0.0)
    fields.update(values)
    job = TrainingJob(**fields)
    job.run_dir = f"runs/{job.id}"
    with ws.registry.write() as session:
        session.add(job)
    return job


def conversations(path: Path, n: int = 40) -> Path:
    """A small chat dataset in brightrun_lora_v4 that the builtin model learns quickly."""
    with path.open("w") as fh:
        for i in range(n):
            turns = [{"role": "user", "content": f"What is {i} plus {i}?"}, {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]
            fh.write(json.dumps({"conversation_id": f"c{i}", "turns": turns}) + "\n")
    return path
