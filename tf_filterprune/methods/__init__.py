"""Pruning methods: one module per method, plus the one-shot criteria."""

from tf_filterprune.methods.criteria import CRITERIA, score_group

__all__ = ["CRITERIA", "score_group"]
