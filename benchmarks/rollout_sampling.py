"""GRPO and PPO groups drawn i.i.d. from the policy (the default) vs as distinct items (without replacement), on
MovieLens-100k or the simulator; JSON on stdout.

    python benchmarks/rollout_sampling.py --dataset movielens-100k [--steps 200] [--seed 0]
    python benchmarks/rollout_sampling.py --dataset simulator

Each ranker-driven method that samples groups from the policy (grpo, ppo, nll_grpo at α 0.3, adagrpo) twice,
`rollouts: iid` and `rollouts: distinct`, with sft beside them, in one comparison (knob_comparison.py says
what is measured).
"""
from __future__ import annotations

from knob_comparison import main

METHODS = (("grpo", "grpo", {}), ("ppo", "ppo", {}), ("nll_grpo_alpha_0_3", "nll_grpo", {"alpha": 0.3}),
           ("adagrpo", "adagrpo", {}))

if __name__ == "__main__":
    main("rollout_sampling", __doc__.splitlines()[0], "rollouts", ("iid", "distinct"), METHODS,
         fixed=(("sft", "sft", {}),))
