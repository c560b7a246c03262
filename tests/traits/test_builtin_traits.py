"""The built-in traits, pinned on the default model: a greedy slice of each
trait end to end (generation with capture, the trait's own judge, vectors per
layer with a held-out split, a steering sweep) shows that the model expresses
the trait, that a layer's mean-difference vector separates held-out answers,
and that steering with it raises the judge score. `actlab bench
trait-quality` measures the full traits."""

from dataclasses import replace

import pytest

from actlab import TraitPipelineConfig, run_trait
from actlab.traits import GenerationConfig, SteerConfig, TraitRun, VectorsConfig
from actlab.traits.definitions import Trait, builtin_traits, load_trait


def small(trait: Trait) -> Trait:
    """24 pairs and 8 steering questions."""
    if trait.natural:
        return replace(trait, natural={pol: prompts[:24] for pol, prompts in trait.natural.items()},
                       questions=trait.questions[:8])
    return replace(trait, questions=trait.questions[:8])


@pytest.mark.parametrize("name", builtin_traits())
def test_builtin_trait_is_expressed_separated_and_steerable(default_model, tmp_path, name):
    trait = small(load_trait(name))
    cfg = TraitPipelineConfig(GenerationConfig(max_new_tokens=32), vectors=VectorsConfig(held_out=0.25),
                              steer=SteerConfig(coeffs=[-1, 0, 1, 2], max_new_tokens=32))
    result = run_trait(default_model, trait, tmp_path / name, cfg=cfg)
    assert result["n_answers"] == 48 and TraitRun.open(result["run"]).answers().num_rows == 48
    assert result["kept_pos"] >= 5 and result["kept_neg"] >= 5, result
    best = result["best_mean_diff"]
    assert best["auroc"] >= 0.9 and min(best["n_test_pos"], best["n_test_neg"]) >= 1, result
    scores = {r["coeff"]: r["mean_score"] for r in result["steering"]}  # the judge's ceiling may be the default
    assert max(scores[1], scores[2]) >= scores[0] >= scores[-1] and max(scores[1], scores[2]) >= scores[-1] + 10, result
