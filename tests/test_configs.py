"""accelerate_configs/: every file is what Accelerate's own parser and launcher make of it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.utils import DistributedType

CONFIG_DIR = Path(__file__).resolve().parents[1] / "accelerate_configs"

# file: (distributed_type, num_processes, num_machines, mixed_precision)
EXPECTED = {
    "cpu.yaml": (DistributedType.NO, 1, 1, "no"),
    "cpu_2proc.yaml": (DistributedType.MULTI_GPU, 2, 1, "no"),
    "t4.yaml": (DistributedType.NO, 1, 1, "fp16"),
    "multi_gpu.yaml": (DistributedType.MULTI_GPU, 8, 1, "fp16"),
    "multi_node.yaml": (DistributedType.MULTI_GPU, 16, 2, "fp16"),
    "fsdp.yaml": (DistributedType.FSDP, 8, 1, "bf16"),
}


def launch_args(name: str, *extra: str):
    """The arguments `accelerate launch --config_file NAME train.py` ends up with."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(CONFIG_DIR / name), *extra,
                                               "train.py"])
    return _validate_launch_command(args)[0]


def test_the_directory_holds_exactly_the_documented_configs():
    assert sorted(p.name for p in CONFIG_DIR.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerates_parser(name):
    config = load_config_from_file(str(CONFIG_DIR / name))
    assert isinstance(config, ClusterConfig)
    assert (config.distributed_type, config.num_processes, config.num_machines,
            config.mixed_precision) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_says_when_to_use_it_and_how_to_launch_it(name):
    text = (CONFIG_DIR / name).read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert len(header) >= 3, f"{name}: no comment on when to use it"
    assert f"accelerate launch --config_file accelerate_configs/{name}" in text
    assert "train.py" in text


def test_cpu_2proc_really_starts_two_processes():
    """The multi-GPU launcher (torchrun) with ACCELERATE_USE_CPU=1; --cpu would start one process."""
    args = launch_args("cpu_2proc.yaml")
    assert args.multi_gpu and not args.cpu and args.num_processes == 2
    assert "ACCELERATE_USE_CPU=1 accelerate launch" in (CONFIG_DIR / "cpu_2proc.yaml").read_text()


def test_multi_node_names_each_machine_and_points_to_the_slurm_job():
    config = load_config_from_file(str(CONFIG_DIR / "multi_node.yaml"))
    assert config.main_process_ip and config.main_process_port and config.machine_rank == 0
    text = (CONFIG_DIR / "multi_node.yaml").read_text()
    assert re.search(r"--machine_rank 1\b", text)
    assert "slurm/train.sbatch" in text and (CONFIG_DIR.parent / "slurm" / "train.sbatch").is_file()
    args = launch_args("multi_node.yaml", "--machine_rank", "1")
    assert args.multi_gpu and args.num_machines == 2 and args.machine_rank == 1


def test_fsdp_config_builds_accelerates_fsdp_plugin():
    """Every fsdp_* key is a launch option, and the environment it makes yields an FSDP2 plugin."""
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin, patch_environment
    from accelerate.utils.launch import prepare_multi_gpu_env

    config = load_config_from_file(str(CONFIG_DIR / "fsdp.yaml"))
    options = {action.dest for action in launch_command_parser()._actions}
    assert set(config.fsdp_config) <= options
    args = launch_args("fsdp.yaml")
    assert args.use_fsdp
    with patch_environment(**prepare_multi_gpu_env(args)):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.auto_wrap_policy.__name__ == "size_based_auto_wrap_policy"
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"
