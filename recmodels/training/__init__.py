"""Training loops before post-training: the policy's next-item pretraining (atomic and semantic IDs),
the ranker's reward regression, and the early-stopping helper they share. Loops report through a
callback, never through an orchestrator."""
