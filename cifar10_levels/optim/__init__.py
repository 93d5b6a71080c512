"""Optimizers (AdamW; Muon with SGD for cifar_speednet) and learning-rate schedules."""
