"""`cifar10-export CKPT OUT_DIR [--push-to-hub REPO_ID]` (or `python -m cifar10_levels.cli.export`):
a checkpoint as a timm Hub model directory (hub/export.py), optionally uploaded."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .arguments import Parser
from ..errors import UserError, exits_cleanly_on_user_error


def export_parser() -> argparse.ArgumentParser:
    p = Parser(prog="cifar10-export", description="Write a checkpoint as a timm model directory "
               "(config.json, model.safetensors, README.md model card) and optionally push it to "
               "the Hugging Face Hub.")
    p.add_argument("checkpoint", metavar="CKPT", help="a .safetensors checkpoint or a run directory")
    p.add_argument("out_dir", metavar="OUT_DIR", help="the model directory to write")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload it, e.g. you/cifar10-resnet50 "
                   "(needs a token: `hf auth login` or HF_TOKEN)")
    p.add_argument("--private", action="store_true", help="create the Hub repo as private")
    p.add_argument("--wandb-url", metavar="URL", help="the training run's W&B page, for the card")
    return p


@exits_cleanly_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = export_parser().parse_args(argv)
    from ..checkpoint.weights import is_export_dir, resolve_weights
    from ..hub.export import check_push_ready, export_model, push_export

    checkpoint = resolve_weights(args.checkpoint, "CKPT")
    if is_export_dir(checkpoint):
        raise UserError(f"CKPT {checkpoint}: already an export; push it by exporting its checkpoint")
    problem = None
    token = None
    if args.push_to_hub:
        try:
            token = check_push_ready(args.push_to_hub)
        except UserError as err:
            problem = err  # the export is still written: it is useful on its own
    out_dir = export_model(checkpoint, Path(args.out_dir), args.push_to_hub, args.wandb_url)
    print(f"exported: {out_dir} (load it with timm.create_model(\"local-dir:{out_dir}\", "
          "pretrained=True))")
    if problem is not None:
        raise UserError(f"{problem}; the export is kept in {out_dir}")
    if args.push_to_hub:
        print(f"pushed: {push_export(out_dir, args.push_to_hub, args.private, token)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
