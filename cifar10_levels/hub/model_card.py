"""The Hub model card (README.md) of an export: huggingface_hub's ModelCardData for the metadata."""
from __future__ import annotations

import html
import json

from ..checkpoint.meta import CheckpointMeta
from ..models.speednet import VARIANTS as SPEEDNET_ARCHS

DATASET_ID = "uoft-cs/cifar10"
MARKDOWN_SPECIAL = "\\`*_{}[]()#+-.!|~"


def text(value) -> str:
    """A value from a file as plain text in markdown: no HTML, link, heading, code or table cell
    of its own (names of models are checked against timm's instead, and shown as code)."""
    escaped = html.escape(" ".join(str(value).split()), quote=False)
    return "".join("\\" + c if c in MARKDOWN_SPECIAL else c for c in escaped)


def inert_json(value) -> str:
    """JSON whose strings cannot end the code block or read as HTML where a renderer slips."""
    text = json.dumps(value, indent=2)
    for char in "<>&`":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


def card_data(meta: CheckpointMeta, results: dict | None, name: str):
    from huggingface_hub import EvalResult, ModelCardData

    test_acc = (results or {}).get("test_acc", meta.test_acc)
    evals = []
    if test_acc is not None:
        evals.append(EvalResult(task_type="image-classification", dataset_type=DATASET_ID,
                                dataset_name="CIFAR-10", dataset_split="test", metric_type="accuracy",
                                metric_value=round(test_acc, 4), metric_name="Test accuracy"))
    tta = (results or {}).get("test_acc_tta")
    if tta is not None:
        evals.append(EvalResult(task_type="image-classification", dataset_type=DATASET_ID,
                                dataset_name="CIFAR-10", dataset_split="test", metric_type="accuracy",
                                metric_value=round(tta, 4),
                                metric_name=f"Test accuracy with TTA ({results['tta_views']} views)"))
    pretrained = bool(meta.recipe.get("pretrained"))
    return ModelCardData(
        model_name=name, library_name="timm", pipeline_tag="image-classification", license="mit",
        datasets=[DATASET_ID], metrics=["accuracy"], eval_results=evals or None,
        tags=["image-classification", "timm", "cifar10", "cifar10-levels", f"level-{meta.level}",
              meta.arch, "pretrained" if pretrained else "from-scratch"])


def loading_snippet(meta: CheckpointMeta, model_id: str) -> str:
    register = (f"import cifar10_levels.models.speednet  # registers {meta.arch} with timm "
                "(pip install this project)\n") if meta.arch in SPEEDNET_ARCHS else ""
    return (
        "```python\n"
        "import timm\n"
        "import torch\n"
        "from PIL import Image, ImageOps\n"
        f"{register}"
        f"model = timm.create_model(\"{model_id}\", pretrained=True).eval()\n"
        "transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))\n"
        "# trained on 32 px CIFAR-10 images: bring yours to 32 px first, as training did\n"
        "image = ImageOps.fit(Image.open(\"image.png\").convert(\"RGB\"), (32, 32), "
        "Image.Resampling.BILINEAR)\n"
        "with torch.inference_mode():\n"
        "    probs = model(transform(image).unsqueeze(0)).softmax(-1)[0]\n"
        "labels = model.pretrained_cfg[\"label_names\"]\n"
        "print(sorted(zip(probs.tolist(), labels), reverse=True)[:3])\n"
        "```\n")


def card_text(meta: CheckpointMeta, results: dict | None, model_id: str, name: str,
              confusion: str | None, wandb_url: str | None) -> str:
    from huggingface_hub import ModelCard

    data = card_data(meta, results, name)
    r = results or {}
    recipe = meta.recipe or r.get("recipe", {})
    pretrained = bool(recipe.get("pretrained"))
    lines = [f"# {text(name)}", "",
             f"A `{meta.arch}` classifier for the 10 CIFAR-10 classes, trained with level "
             f"{text(meta.level)} of the cifar10-levels project "
             f"({text(r.get('title') or recipe.get('title', ''))}).", "",
             "## Results on the CIFAR-10 test split", ""]
    if r:
        lines += ["| metric | value |", "|---|---|",
                  f"| test accuracy | {r['test_acc']:.2%} |"]
        if r.get("test_acc_tta") is not None:
            lines.append(f"| test accuracy with TTA ({r['tta_views']} views) | {r['test_acc_tta']:.2%} |")
        for key, label in (("test_nll", "test NLL"), ("test_ece", "test ECE (15 bins)")):
            if r.get(key) is not None:
                lines.append(f"| {label} | {r[key]:.4f} |")
        lines += [f"| best validation accuracy | {r['best_val_acc']:.2%} (epoch {r['best_epoch']}) |",
                  f"| test images | {r['split_sizes']['test']} |", ""]
        lines += ["Per-class test accuracy:", "", "| class | accuracy |", "|---|---|"]
        lines += [f"| {text(c)} | {a:.2%} |" for c, a in r["per_class_acc"].items()] + [""]
    else:
        lines += [f"Validation accuracy {meta.val_acc:.2%} (epoch {meta.epoch})"
                  + (f", test accuracy {meta.test_acc:.2%}" if meta.test_acc is not None else "")
                  + ". No results.json was found beside the checkpoint, so no per-class table.", ""]
    if confusion:
        lines += [f"![confusion matrix on the test split]({confusion})", ""]
    lines += ["## Training", "",
              f"- recipe: level {text(meta.level)}, seed {meta.seed}, {meta.img_size} px input, "
              f"{'ImageNet-pretrained start' if pretrained else 'random initialization'}",
              "- phases: " + ", ".join(
                  f"{text(p['name'])} {p['epochs']} epochs at lr {p['lr']}"
                  f"{'' if p['train_backbone'] else ' (backbone frozen)'}"
                  for p in recipe.get("phases", [])),
              f"- normalization: mean {meta.mean}, std {meta.std}"]
    if meta.distilled_from:
        lines.append("- distilled from: " + ", ".join(text(t) for t in meta.distilled_from)
                     + " (teacher arch and the first 16 hex digits of its file's sha256)")
    if meta.weights == "ema":
        lines.append(f"- weights: the exponential moving average of the trained weights (decay at most "
                     f"{recipe.get('ema_decay')}), which validated better than the raw weights")
    if r:
        lines += [f"- hardware: {text(r['hardware'])}, precision {text(r['precision'])}, global batch "
                  f"{r['global_batch']}",
                  f"- wall time: {r['train_seconds'] / 60:.1f} min of training; "
                  f"{r['num_params'] / 1e6:.2f}M parameters",
                  f"- data: {text(r['dataset'])} (train {r['split_sizes']['train']}, val "
                  f"{r['split_sizes']['val']} held out of the train split, test "
                  f"{r['split_sizes']['test']})"]
    if wandb_url:
        lines.append(f"- Weights & Biases run: <{wandb_url}>")
    lines += ["", "<details><summary>full recipe</summary>", "", "```json",
              inert_json(recipe), "```", "", "</details>", "",
              "## How to use", "", loading_snippet(meta, model_id),
              "Or with this project: `cifar10-predict --weights DIR_OR_CHECKPOINT images/` "
              "(an export directory works too).", "",
              "## Limitations", "",
              f"- Trained on CIFAR-10 only: 32 px images of {', '.join(map(text, meta.class_names))}. "
              "Any other image is still forced into one of these classes.",
              f"- {'Fine-tuned from ImageNet weights' if pretrained else 'Trained from scratch (no pretraining)'}"
              f" on 32 px images{'' if meta.img_size == 32 else f' upsampled to {meta.img_size} px'}; "
              "larger photos lose their detail when brought to 32 px first."]
    if meta.arch in SPEEDNET_ARCHS:
        lines.append(f"- `{meta.arch}` is not a timm architecture: loading needs "
                     "`import cifar10_levels.models.speednet` (this project) first.")
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"))
