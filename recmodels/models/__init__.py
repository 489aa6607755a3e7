"""The networks: the generative policy over atomic item tokens (`policy`), its semantic-ID variant
(`semantic_policy`) and the ranker reward model (`ranker`). Small modules with dataclass configs."""
