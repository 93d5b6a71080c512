"""Train a CIFAR-10 level recipe: `accelerate launch train.py --level 1` (or `python train.py`)."""
import sys

from cifar10_levels.cli.train import train_main

if __name__ == "__main__":
    sys.exit(train_main())
