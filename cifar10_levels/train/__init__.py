"""One training run: the Trainer, its setup, the epoch loop with its step hooks, EMA, preflight."""
