"""Vote across trained checkpoints: `python ensemble.py --weights ckpts/`."""
import sys

from cifar10_levels.cli.train import ensemble_main

if __name__ == "__main__":
    sys.exit(ensemble_main())
