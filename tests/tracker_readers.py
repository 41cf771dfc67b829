"""Read experiment-tracker data back with the trackers' own readers (tests only)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def tensorboard_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files under `directory`, as TensorBoard loads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def tensorboard_plugin_tags(directory: Path, plugin: str) -> list[str]:
    """Tags holding data for a TensorBoard plugin (hparams, text)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory), size_guidance={"tensors": 0})
    accumulator.Reload()
    try:
        return sorted(accumulator.PluginTagToContent(plugin))
    except KeyError:
        return []


def tensorboard_texts(directory: Path) -> dict[str, str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    accumulator = EventAccumulator(str(directory), size_guidance={"tensors": 0})
    accumulator.Reload()
    tags = accumulator.PluginTagToContent("text")
    return {tag: tensor_util.make_ndarray(accumulator.Tensors(tag)[-1].tensor_proto).item().decode() for tag in tags}


def mlflow_run(tracking_uri: str, run_id: str):
    """(run, {metric: [(step, value), ...]}) as MLflow's own client reads them back."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(run_id)
    history = {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in run.data.metrics}
    return run, history


def mlflow_artifacts(tracking_uri: str, run_id: str, path: str) -> list[str]:
    from mlflow.tracking import MlflowClient

    return sorted(Path(info.path).name for info in MlflowClient(tracking_uri=tracking_uri).list_artifacts(run_id, path))


# W&B's transaction log (.wandb): a LevelDB-style log of wandb_internal_pb2.Record
# messages. Header ":W&B", magic 0xBEE1, version 0; then 32 KiB blocks of chunks, each
# with a masked-free CRC-32 (seeded with the chunk type), a length and a type
# (1 full, 2 first, 3 middle, 4 last).
_BLOCK, _CHUNK_HEADER = 32768, 7


def wandb_records(path: Path) -> list:
    """Every record of a .wandb file, checksums verified, parsed with W&B's own protobufs."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<HB", data[4:7]) == (0xBEE1, 0), "not a W&B transaction log"
    position, pending, payloads = 7, b"", []
    while position + _CHUNK_HEADER <= len(data):
        left_in_block = _BLOCK - position % _BLOCK
        if left_in_block < _CHUNK_HEADER:
            position += left_in_block
            continue
        checksum, length, kind = struct.unpack("<IHB", data[position:position + _CHUNK_HEADER])
        if (checksum, length, kind) == (0, 0, 0):  # block padding
            position += left_in_block
            continue
        chunk = data[position + _CHUNK_HEADER:position + _CHUNK_HEADER + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == checksum, f"bad checksum at byte {position}"
        position += _CHUNK_HEADER + length
        if kind == 1:
            payloads.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            payloads.append(pending + chunk)
    records = []
    for payload in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def wandb_history(records: list) -> dict[str, list[tuple[int, float]]]:
    """Metric -> [(step, value)] from the history records."""
    import json

    history: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        if record.WhichOneof("record_type") != "history":
            continue
        items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        step = record.history.step.num if record.history.HasField("step") else int(items.get("_step", -1))
        for key, value in items.items():
            if not key.startswith("_"):
                history.setdefault(key, []).append((step, value))
    return history
