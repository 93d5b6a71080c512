import torch
from accelerate.utils import set_seed

from cifar10_levels.checkpoint.io import CheckpointMeta, load_checkpoint, read_meta, save_checkpoint
from cifar10_levels.models.factory import create_model, set_backbone_trainable

from helpers.data import CLASS_NAMES


def meta(arch: str, img_size: int = 32) -> CheckpointMeta:
    return CheckpointMeta(arch=arch, level="1", img_size=img_size, num_classes=10,
                          class_names=CLASS_NAMES, mean=[0.5] * 3, std=[0.25] * 3, seed=1,
                          epoch=3, val_acc=0.5)


def test_round_trip_gives_identical_logits(tmp_path):
    model = create_model("test_resnet", 10).eval()
    path = tmp_path / "best.safetensors"
    save_checkpoint(path, model.state_dict(), meta("test_resnet"))
    loaded, m = load_checkpoint(path)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert m.arch == "test_resnet" and m.class_names == CLASS_NAMES and m.epoch == 3
    assert not list(tmp_path.glob("*.tmp"))


def test_metadata_is_readable_without_loading_weights(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, create_model("test_resnet", 10).state_dict(), meta("test_resnet", 48))
    assert read_meta(path).img_size == 48


def test_freezing_leaves_only_the_classifier_trainable():
    set_seed(0)
    model = create_model("test_resnet", 10)
    set_backbone_trainable(model, False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith("fc.")}
    set_backbone_trainable(model, True)
    assert all(p.requires_grad for p in model.parameters())
