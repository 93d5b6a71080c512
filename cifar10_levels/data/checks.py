"""What is wrong with a --dataset source, found before anything is loaded: no image is read and
no cache is written, so preflight can report it with every other problem at once."""
from __future__ import annotations

from pathlib import Path

from .cifar10 import GET_LOCAL_COPY, HUB_ID, cache_problem
from ..offline import unavailable_reason

# The original python release (pickled batches), which is never unpickled here.
PYTHON_FORMAT_FILES = ("data_batch_1", "test_batch", "batches.meta")


def hub_copy_cached() -> bool:
    """A copy of uoft-cs/cifar10 in the Hugging Face caches, which `load_dataset` reads offline."""
    import datasets.config
    import huggingface_hub.constants

    snapshots = Path(huggingface_hub.constants.HF_HUB_CACHE) / \
        f"datasets--{HUB_ID.replace('/', '--')}" / "snapshots"
    prepared = Path(datasets.config.HF_DATASETS_CACHE) / HUB_ID.replace("/", "___")
    return any(snapshots.glob("*/*")) or prepared.is_dir()


def dataset_problem(source: str | None, hub_up: bool) -> str | None:
    """Why `--dataset source` cannot be loaded, found without reading any image; None when it can."""
    cache = cache_problem()
    if cache is not None:
        return f"--dataset: {cache}"
    if source is None:
        if hub_up or hub_copy_cached():
            return None
        return (f"--dataset: none given, {HUB_ID} is not in the Hugging Face cache and "
                f"{unavailable_reason()}; {GET_LOCAL_COPY}")
    path = Path(source)
    python_format = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
    if not path.exists():
        return f"--dataset {source}: no such file or directory; {GET_LOCAL_COPY}"
    if path.is_file() and path.suffix in (".parquet", ".arrow"):
        return (f"--dataset {source}: a single split file; CIFAR-10 needs its train and test splits, "
                f"so pass the directory that holds both split files (e.g. --dataset {path.parent})")
    if path.name.startswith("cifar-10-python") or any(
            (python_format / name).exists() for name in PYTHON_FORMAT_FILES):
        return (f"--dataset {source}: this is the original CIFAR-10 python release (pickled batches, "
                f"which are never unpickled here); {GET_LOCAL_COPY}")
    if path.is_file():
        return f"--dataset {source}: a file; pass a directory in the {HUB_ID} layout ({GET_LOCAL_COPY})"
    return _layout_problem(path, source)


def _layout_problem(path: Path, source: str) -> str | None:
    """The split files `datasets.load_dataset(path)` would read, resolved without loading them."""
    from datasets.data_files import DataFilesDict
    from datasets.load import dataset_module_factory

    try:
        module = dataset_module_factory(str(path))
        configs = module.builder_configs_parameters.builder_configs
        patterns = configs[0].data_files if configs else module.builder_kwargs.get("data_files")
        splits = {str(k): len(v) for k, v in DataFilesDict.from_patterns(
            patterns, base_path=str(path)).items()} if patterns else {}
    except Exception as err:
        return (f"--dataset {source}: no dataset files found in the {HUB_ID} layout "
                f"({str(err).splitlines()[0][:120]}); {GET_LOCAL_COPY}")
    missing = [name for name in ("train", "test") if not splits.get(name)]
    if missing:
        names = "' or '".join(missing)
        return (f"--dataset {source}: no '{names}' split files (found "
                f"{sorted(splits) or 'none'}); expected train-*.parquet and test-*.parquet as in "
                f"{HUB_ID}; {GET_LOCAL_COPY}")
    return None
