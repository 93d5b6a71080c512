"""Run under torchrun with 2 CPU processes: the checkpoint path of train.py on an FSDP2-sharded model.

Accelerate will not form FSDP on CPUs, so this drives torch's FSDP2 (`fully_shard`, gloo) directly
and uses the same calls as train.py under FSDP: the full state dict Accelerate's get_state_dict
gathers for FSDP2, our save_checkpoint/load_checkpoint, and load_full_state_dict (load_best).
"""
import sys
from pathlib import Path

import timm
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's package, installed or not

from cifar10_levels.checkpoint.io import CheckpointMeta, load_checkpoint, save_checkpoint  # noqa: E402
from cifar10_levels.checkpoint.state_dict import clean_state_dict, load_full_state_dict  # noqa: E402


def sharded_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", num_classes=10)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            fully_shard(module, mesh=mesh)
    return fully_shard(model, mesh=mesh).eval()


def main(path: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    reference = timm.create_model("test_resnet", num_classes=10).eval()
    trained = sharded_model(0)  # the same initial weights as the reference, sharded
    assert isinstance(next(trained.parameters()), DTensor)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, cpu_offload=True)
    full = get_model_state_dict(trained, options=options)  # what Accelerate gathers under FSDP2
    if rank == 0:
        meta = CheckpointMeta(arch="test_resnet", level="1", img_size=32, num_classes=10,
                              class_names=[str(i) for i in range(10)], mean=[0.5] * 3,
                              std=[0.25] * 3, seed=0, epoch=1, val_acc=0.5)
        save_checkpoint(path, clean_state_dict(full), meta)
        loaded, _ = load_checkpoint(path)
        for key, value in reference.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
    dist.barrier()
    from safetensors.torch import load_file

    other = sharded_model(1)  # other weights, then the best checkpoint loaded as load_best does
    load_full_state_dict(other, load_file(path))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(other(x), reference(x), atol=1e-5)
    print(f"fsdp checkpoint ok on rank {rank}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
