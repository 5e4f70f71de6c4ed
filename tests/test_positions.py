"""Positions name tokens of each row's text, whatever the padding."""

from __future__ import annotations

import pytest
import torch

from statetap.positions import resolve_positions


def _text_index(mask: torch.Tensor, row: int, position: int) -> int:
    """The padded index of a row's ``position``-th real token, by walking the mask."""
    real = [i for i, m in enumerate(mask[row].tolist()) if m]
    return real[position]


@pytest.mark.parametrize("side", ["left", "right", "holes"])
def test_positions_follow_the_mask(side):
    batch, length = 4, 9
    mask = torch.ones(batch, length, dtype=torch.long)
    pads = torch.randint(0, 5, (batch,))
    for row, pad in enumerate(pads.tolist()):
        if side == "left":
            mask[row, :pad] = 0
        elif side == "right":
            mask[row, length - pad :] = 0
        else:
            mask[row, torch.randperm(length)[:pad]] = 0
    spec = [0, 1, -1, -2]
    got = resolve_positions(spec, batch, length, mask)
    for row in range(batch):
        assert got[row].tolist() == [_text_index(mask, row, p) for p in spec]
    assert resolve_positions("last", batch, length, mask)[:, 0].tolist() == [
        _text_index(mask, row, -1) for row in range(batch)
    ]
    assert resolve_positions("all", batch, length, mask).tolist() == [list(range(length))] * batch


def test_per_row_positions_and_errors():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    per_row = torch.tensor([[0, 2], [4, -5]])
    assert resolve_positions(per_row, 2, 5, mask).tolist() == [[2, 4], [4, 0]]
    with pytest.raises(
        ValueError, match=r"positions\[0, 0\] = 3 is outside row 0, which has 3 real tokens"
    ):
        resolve_positions(3, 2, 5, mask)
    padding = torch.tensor([[0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])  # no "positions -0 .. -1"
    with pytest.raises(ValueError, match=r"has 0 real tokens \(its attention_mask is all padding"):
        resolve_positions(-1, 2, 5, padding)
    with pytest.raises(ValueError, match=r"must have shape \[P\] or \[B=2, P\]"):
        resolve_positions(torch.zeros(3, 1, dtype=torch.long), 2, 5, mask)
    with pytest.raises(TypeError, match="integer tensor"):
        resolve_positions(torch.tensor([1.0]), 2, 5, mask)
    with pytest.raises(ValueError, match="'first'"):
        resolve_positions("first", 2, 5, mask)
    with pytest.raises(ValueError, match=r"attention_mask must have shape \[B=2, L=5\]"):
        resolve_positions(0, 2, 5, mask[:, :4])
