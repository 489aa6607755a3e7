"""Generating items from a policy: beam search over semantic-ID code tuples (cached, constrained
or not) and the rollout sampler the RL post-training methods share."""
