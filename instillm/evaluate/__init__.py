"""Evaluation: metrics, held-out evaluation on unseen instructions, and suites."""
