"""Padding and offsets against a naive construction."""

import numpy as np
import pytest
import torch

from actlab import ActlabError
from actlab.tokens import offsets, pad


@pytest.mark.parametrize("side", ["left", "right"])
def test_pad_against_naive(side):
    ids = [[5, 6, 7], [8], [9, 10]]
    padded = pad(ids, side, pad_id=0)
    for row, seq in enumerate(ids):
        width = padded.input_ids.shape[1]
        start = width - len(seq) if side == "left" else 0
        mask = [0] * width
        mask[start:start + len(seq)] = [1] * len(seq)
        assert padded.input_ids[row, start:start + len(seq)].tolist() == seq
        assert padded.attention_mask[row].tolist() == mask
        assert padded.position_ids[row, start:start + len(seq)].tolist() == list(range(len(seq)))  # real tokens only
        assert int(padded.starts[row]) == start and int(padded.lengths[row]) == len(seq)
    assert set(padded.inputs()) == {"input_ids", "attention_mask", "position_ids"}


def test_pad_refuses_an_unknown_side():
    with pytest.raises(ActlabError, match="padding_side must be 'left' or 'right'") as info:
        pad([[1]], "middle", 0)
    assert info.value.param == "padding_side"


def test_offsets():
    assert offsets([3, 0, 2]).tolist() == [0, 3, 3, 5]
    assert offsets(np.array([], dtype=np.int64)).tolist() == [0]
    assert offsets(torch.tensor([1, 1])).dtype == torch.int64
