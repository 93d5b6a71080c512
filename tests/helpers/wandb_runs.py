"""Reading W&B's offline run file (leveldb-log framing of protobuf Records), as wandb's own reader does."""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class WandbRun:
    name: str = ""
    project: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    exited: bool = False


def _items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def read_wandb_run(path: Path) -> WandbRun:
    """Parse a run-*.wandb file the way wandb's own reader does (7-byte header, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7])[:2] == (b":W&B", 0xBEE1)
    out, pos, pending = WandbRun(), 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind not in (1, 4):  # FULL or LAST chunk ends a record
            continue
        record = pb.Record()
        record.ParseFromString(pending)
        pending = b""
        which = record.WhichOneof("record_type")
        if which == "run":
            out.name, out.project = record.run.display_name, record.run.project
            out.group, out.tags = record.run.run_group, list(record.run.tags)
        elif which == "config":
            out.config.update(_items(record.config.update))
        elif which == "history":
            out.history.append(_items(record.history.item))
        elif which == "summary":
            out.summary.update(_items(record.summary.update))
        elif which == "artifact":
            out.artifacts.append(record.artifact.name)
        elif which == "exit":
            out.exited = True
    return out


def offline_run(run_dir: Path) -> WandbRun:
    files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, f"expected one offline W&B run under {run_dir}, found {files}"
    run = read_wandb_run(files[0])
    # read as soon as the process ended: the file must be whole by then, ready for `wandb sync`
    assert run.exited, f"{files[0]} has no exit record: W&B had not finished writing it"
    return run
