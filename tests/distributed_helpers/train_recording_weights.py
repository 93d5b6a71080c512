"""train.py plus a test-only hook: after every epoch each process writes a digest of its own weights.

Launch it exactly like train.py; set RECORD_WEIGHTS_DIR to where the digests go
(rank{R}-epoch{E}.json: {"parameters": sha256, "buffers": sha256}, with --ema also "ema": the
digest of the EMA's parameters and buffers). STOP_AFTER_EPOCH=E: every process asks to stop once epoch
E is saved, as SIGTERM would (the run stops at the next stop check, saving its state, exit 143).
"""
import hashlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cifar10_levels.train import trainer  # noqa: E402
from cifar10_levels.cli.train import train_main  # noqa: E402


def digest(tensors) -> str:
    sha = hashlib.sha256()
    for name, tensor in tensors:
        sha.update(name.encode())
        sha.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


def recording_save_state(self) -> None:
    model = self.accelerator.unwrap_model(self.model)
    record = {"parameters": digest(model.named_parameters()), "buffers": digest(model.named_buffers())}
    if self.ema is not None:
        record["ema"] = digest(self.ema.module.state_dict().items())
    out = Path(os.environ["RECORD_WEIGHTS_DIR"])
    out.mkdir(parents=True, exist_ok=True)
    name = f"rank{self.accelerator.process_index}-epoch{self.state.epochs_done}.json"
    (out / name).write_text(json.dumps(record))
    original_save_state(self)
    if os.environ.get("STOP_AFTER_EPOCH") == str(self.state.epochs_done):
        self.accelerator.set_trigger()


original_save_state = trainer.Trainer.save_state
trainer.Trainer.save_state = recording_save_state

if __name__ == "__main__":
    sys.exit(train_main())
