"""The commands: one module each for train, ensemble, evaluate, predict, export and report, and the argument helpers they share."""
