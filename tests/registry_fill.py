"""A registry full of history, written through the registry's own tables: datasets, jobs
with metric points, models, cost records and notifications. Used by the read-command
import test (a few rows) and by bench/bench_startup.py (10,000 of each).

    python -c "import registry_fill, sys; registry_fill.populate(sys.argv[1], 10000)" HOME
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path


def populate(home: str | Path, n: int = 3) -> list[str]:
    """Fill the registry in `home` with `n` of each; returns [a job id, a dataset id, a model id],
    also written to `home/ids.txt`."""
    from brightrun_cli.registry.ids import new_id
    from brightrun_cli.registry.tables import CostRecord, Dataset, MetricPoint, ModelArtifact, Notification, TrainingJob
    from brightrun_cli.registry.timeutil import utcnow
    from brightrun_cli.workspace import Workspace

    ws = Workspace.open(home)
    now = utcnow()
    stats = {"train_conversations": 36, "validation_conversations": 4, "train_tokens": 9000, "validation_tokens": 1000,
             "turns": 80, "turns_by_role": {"user": 40, "assistant": 40},
             "tokens_per_conversation": {"min": 100, "p50": 240, "p90": 400, "p99": 480, "max": 500, "mean": 250.0},
             "length_histogram": [{"max_tokens": 256, "conversations": 30}, {"max_tokens": 512, "conversations": 10}]}
    samples = [{"conversation_id": "c0", "turns": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    ids: list[str] = []
    with ws.registry.write() as tx:
        for i in range(n):
            when = now - timedelta(minutes=n - i)
            dataset = Dataset(id=new_id(), name=f"data-{i}", status="ready", storage_path=f"datasets/d{i}/data.jsonl",
                              file_name="d.jsonl", file_size=10_000, total_conversations=40, total_training_pairs=36,
                              total_validation_pairs=4, total_tokens=10_000, avg_turns_per_conversation=2.0, avg_tokens_per_turn=125.0,
                              token_count_method="approx:chars/4", val_split=0.1, stats=stats, training_ready=True,
                              validated_at=when, validation_errors=[], sample_data=samples, created_at=when, updated_at=when)
            job = TrainingJob(id=new_id(), dataset_id=dataset.id, preset_id="tiny", base_model="builtin:tiny",
                              hyperparameters={"num_epochs": 1, "learning_rate": 1e-3}, gpu_config={"type": "cpu", "count": 1, "hourly_rate": 0.0},
                              hosts=["local"], status="completed", current_stage="completed", progress=100.0, current_epoch=1,
                              total_epochs=1, current_step=20, total_steps=20, tokens_processed=9000,
                              current_metrics={"training_loss": 0.5, "validation_loss": 0.6}, queued_at=when, started_at=when,
                              completed_at=when + timedelta(seconds=40), estimated_total_cost=0.0, final_cost=0.0,
                              run_dir=None, created_at=when, updated_at=when)
            job.run_dir = f"runs/{job.id}"
            model = ModelArtifact(id=new_id(), job_id=job.id, dataset_id=dataset.id, name=f"data-{i}-model", base_model="builtin:tiny",
                                  storage_path=None, quality_metrics={"overall_score": 4, "convergence_quality": "good",
                                                                      "base_validation_loss": 2.0, "final_validation_loss": 0.6},
                                  training_summary={"total_cost": 0.0, "total_steps": 20}, configuration={"preset_id": "tiny"},
                                  artifacts={"files": []}, created_at=when, updated_at=when)
            model.storage_path = f"models/{model.id}"
            for row in (dataset, job, model):  # parents first: foreign keys are checked at each insert
                tx.add(row)
                tx.flush()
            tx.add(CostRecord(id=new_id(), job_id=job.id, cost_type="compute", amount=0.01, gpu_type="cpu",
                              billing_period=when.strftime("%Y-%m-01"), recorded_at=when, details={"hours": 0.01}))
            tx.add(Notification(id=new_id(), type="job_completed", title="Training completed", message=f"Job {job.id[:10]} completed",
                                action_command="brightrun models list", job_id=job.id, created_at=when))
            if i == n - 1:
                ids = [job.id, dataset.id, model.id]
                tx.flush()
                tx.add_all([MetricPoint(job_id=job.id, timestamp=when, epoch=s / 20, step=s, split="train", training_loss=2.0 / s,
                                        learning_rate=1e-3, throughput=1000.0) for s in range(1, 21)])
    Path(home, "ids.txt").write_text(" ".join(ids))
    return ids
