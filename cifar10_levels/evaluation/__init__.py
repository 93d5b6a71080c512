"""Evaluation passes over a loader (plain and test-time augmented), the test-time views, inference helpers and metrics."""
