"""AdaGRPO's difficulty test as the seed defines it (normalized entropy >= tau_H) vs relative to the batch (the
most uncertain half of each batch), beside the fixed NLL+GRPO mixture at the same α; JSON on stdout.

    python benchmarks/adagrpo_gate.py --dataset movielens-100k [--steps 200] [--seed 0]

On a large atomic catalog the seed's test never closes (the normalized entropy of a softmax over 1,682 items
stays above 0.5), so its gate is the discriminability test alone; `hard: entropy_quantile` keeps the batch's
most uncertain share (`hard_share` 0.5). One comparison (knob_comparison.py says what is measured), with the
gate-open, hard and discriminable rates at the selected step.
"""
from __future__ import annotations

from knob_comparison import main

METHODS = (("adagrpo", "adagrpo", {"alpha": 0.3}),)

if __name__ == "__main__":
    main("adagrpo_gate", __doc__.splitlines()[0], "hard", ("entropy", "entropy_quantile"), METHODS,
         fixed=(("sft", "sft", {}), ("nll_grpo_alpha_0_3", "nll_grpo", {"alpha": 0.3})))
