"""Evaluation of policies: full-catalog ranking, metrics and the comparison report."""
