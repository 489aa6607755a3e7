"""RL contexts at the window end only (the default) vs at every real target position, on MovieLens-100k or the
simulator: does giving the ranker-driven methods as many contexts per step as the NLL methods have targets
change the ranking of the methods? JSON on stdout.

    python benchmarks/rl_contexts.py --dataset simulator [--steps 60] [--eval-every 20] [--seed 0]
    python benchmarks/rl_contexts.py --dataset simulator --steps 60 --eval-every 20 \
        --simulator n_users=1000 --simulator n_items=500 --simulator events_per_user=10,40   # the robustness world

Every ranker-driven method (dpo, ppo, grpo, nll_grpo at α 0.3, adagrpo) twice, `contexts: last` and
`contexts: every`, with the NLL methods (sft, exp_rw_sft at its default λ) beside them, in one comparison
(knob_comparison.py says what is measured; `contexts_per_step` / `targets_per_step` is the signal parity).
A step with `every` costs about T times a step with `last`: each context gets its own policy forward pass.
"""
from __future__ import annotations

from knob_comparison import main

METHODS = (("dpo", "dpo", {}), ("ppo", "ppo", {}), ("grpo", "grpo", {}),
           ("nll_grpo_alpha_0_3", "nll_grpo", {"alpha": 0.3}), ("adagrpo", "adagrpo", {}))

if __name__ == "__main__":
    main("rl_contexts", __doc__.splitlines()[0], "contexts", ("last", "every"), METHODS,
         fixed=(("sft", "sft", {}), ("exp_rw_sft", "exp_rw_sft", {})))
