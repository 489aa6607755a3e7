"""Studies across data sets and noise levels: the same method comparison run many times (docs/design.md §5-6)."""
