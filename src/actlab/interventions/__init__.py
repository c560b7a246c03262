"""Interventions: edits of a model's activations at a hook, at chosen positions.

One family, one mechanism, used by extraction (`Model.extract(...,
interventions=)`), by `actlab.generate` (per row, inside the continuous
batch) and by patching. Every edit but the SAE's is one formula,

    x -> keep * x + add + (clamp(x . u, lo, hi) - x . u) * u       (u unit or 0)

so that rows with different edits run as one tensor expression:

    Add(hook, vector, coeff)        keep 1, add coeff * vector (actlab.Steering is this)
    Set(hook, value)                keep 0, add value ((w,), or one row per selected position)
    Ablate(hook, mean=None)         keep 0, add 0 or a mean activation (w,)
    ProjectOut(hook, direction)     u = direction / |direction|, lo = hi = 0 (directional ablation)
    Cap(hook, direction, lo, hi)    the projection onto u held within [lo, hi]

and EditLatents(sae, latents, mode, value) changes chosen latents of an SAE at
its hook (ablate: 0, clamp: value, scale: value x f) and adds the change of
the SAE's reconstruction, x + dec(f') - dec(f): the SAE's error term is kept,
and an edit of nothing returns x exactly.

`positions` picks where: "all" (every real token), "last" (the last real
token), a list of token indices (negative ones count from the end; padding
never counts), and while generating "prompt" (the prompt's tokens) or
"answer" (the tokens of the answer, as they are fed). `head` (at
`blocks.L.attn.hook_z` only) edits one attention head's slice of width
d_head. An identity edit (Add of zeros, Cap to (-inf, inf), an EditLatents
of no latents) changes nothing: keep * x + 0 is x to the bit.
"""

from .batch import BatchEdits, check_against, edits_answer, per_row, plan_steps, prompt_indices, run_steps, selected
from .kinds import (
                    GENERATION_ONLY,
                    LATENT_MODES,
                    POSITION_WORDS,
                    Ablate,
                    Add,
                    Affine,
                    Cap,
                    EditLatents,
                    Intervention,
                    ProjectOut,
                    Set,
                    VectorEdit,
)

__all__ = ["GENERATION_ONLY", "LATENT_MODES", "POSITION_WORDS", "Ablate", "Add", "Affine", "BatchEdits", "Cap",
           "EditLatents", "Intervention", "ProjectOut", "Set", "VectorEdit", "check_against", "edits_answer", "per_row",
           "plan_steps", "prompt_indices", "run_steps", "selected"]
