"""Evaluation: answering dataset examples with experts and scoring the answers."""
