import numpy as np
import torch

from cifar10_levels.data.cifar10 import load_cifar10, make_loader, stratified_split, stratified_subset


def test_split_is_stratified_disjoint_and_deterministic():
    labels = np.repeat(np.arange(10), 5000)
    rest, held = stratified_split(labels, 0.1, seed=42)
    assert len(rest) == 45000 and len(held) == 5000
    assert np.bincount(labels[held]).tolist() == [500] * 10
    assert not set(rest) & set(held)
    assert sorted(set(rest) | set(held)) == list(range(50000))
    again_rest, again_held = stratified_split(labels, 0.1, seed=42)
    assert np.array_equal(held, again_held) and np.array_equal(rest, again_rest)
    _, other = stratified_split(labels, 0.1, seed=7)
    assert not np.array_equal(held, other)


def test_stratified_subset_keeps_class_balance():
    labels = np.repeat(np.arange(10), 100)
    sub = stratified_subset(labels, 200)
    assert np.bincount(labels[sub]).tolist() == [20] * 10
    assert len(stratified_subset(labels, 5000)) == 1000


def test_load_decodes_once_into_uint8_tensors(tiny_cifar):
    data = load_cifar10(str(tiny_cifar))
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape[1:] == (3, 32, 32)
    assert (len(data.train), len(data.val), len(data.test)) == (360, 40, 100)
    assert torch.bincount(data.val.labels).tolist() == [4] * 10
    assert data.class_names[0] == "airplane"
    cached = load_cifar10(str(tiny_cifar))  # second load reads the decoded cache
    assert torch.equal(cached.train.images, data.train.images)
    limited = load_cifar10(str(tiny_cifar), train_limit=100, eval_limit=20)
    assert (len(limited.train), len(limited.val), len(limited.test)) == (100, 20, 20)


def test_loader_yields_uint8_batches_without_per_sample_work(tiny_cifar):
    data = load_cifar10(str(tiny_cifar))
    batches = list(make_loader(data.train, 64, train=True, seed=0))
    assert len(batches) == 360 // 64  # drop_last keeps Mixup's even batches
    images, labels = batches[0]
    assert images.dtype == torch.uint8 and images.shape == (64, 3, 32, 32) and labels.shape == (64,)
    again = next(iter(make_loader(data.train, 64, train=True, seed=0)))
    assert torch.equal(again[1], labels)


def test_stratified_subset_gives_exactly_the_limit_as_evenly_as_possible():
    labels = np.repeat(np.arange(10), 4500)
    for limit in (1, 7, 256, 4999):
        sub = stratified_subset(labels, limit)
        counts = np.bincount(labels[sub], minlength=10)
        assert len(sub) == len(set(sub)) == limit and counts.max() - counts.min() <= 1
    uneven = np.concatenate([np.zeros(300, int), np.ones(100, int)])  # 3:1
    assert np.bincount(uneven[stratified_subset(uneven, 10)]).tolist() == [8, 2]  # 7.5 and 2.5
    assert np.array_equal(stratified_subset(labels, 256), stratified_subset(labels, 256))


def test_train_limit_256_gives_256_images(tiny_cifar):
    data = load_cifar10(str(tiny_cifar), train_limit=256, eval_limit=33)
    assert (len(data.train), len(data.val), len(data.test)) == (256, 33, 33)
    assert torch.bincount(data.train.labels).tolist() == [26] * 6 + [25] * 4


def test_cache_dir_is_read_when_used_not_at_import(tiny_cifar, tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR10_LEVELS_CACHE", str(tmp_path / "here"))
    load_cifar10(str(tiny_cifar))
    assert [p.suffix for p in (tmp_path / "here").iterdir()] == [".safetensors"]
