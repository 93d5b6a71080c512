"""Voting across checkpoints: members, their cached predictions, the votes and the report."""
