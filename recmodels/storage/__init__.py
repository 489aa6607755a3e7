"""Files on disk: atomic writes, `{state_dict, config}` checkpoints (loaded with weights_only=True)
and rebuilding a policy or ranker from its checkpoint."""
