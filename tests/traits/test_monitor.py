"""Per-token projections against a naive one-text loop over HF hidden states."""

import numpy as np
import pytest
import torch
from conftest import TEXTS

from actlab import ActlabError
from actlab.traits.monitor import monitor


def test_projections_against_hidden_states(tiny_models):
    model = tiny_models["llama"]
    rng = np.random.default_rng(0)
    vectors = {0: rng.normal(size=64).astype(np.float32), 1: rng.normal(size=64).astype(np.float32)}
    result = monitor(model, TEXTS, vectors)
    for i, text in enumerate(TEXTS):
        ids = model.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden = model.hf_model(**ids, output_hidden_states=True).hidden_states
        assert len(result.tokens[i]) == ids["input_ids"].shape[1]
        for layer, v in vectors.items():
            expected = hidden[layer + 1][0].numpy() @ (v / np.linalg.norm(v))
            assert np.allclose(result.values[layer][i], expected, rtol=1e-4, atol=1e-4)


def test_bad_vectors(tiny_models):
    with pytest.raises(ActlabError, match="width"):
        monitor(tiny_models["llama"], ["hi"], {0: np.ones(5)})
    with pytest.raises(ActlabError, match="no trait vectors"):
        monitor(tiny_models["llama"], ["hi"], {})
