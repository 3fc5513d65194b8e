"""Pool.proportional: stage outputs whose rows split over samples by weight (the generic HF
plugin's encoder/adapter rows: one per modality token, or a fixed number per token)."""

from __future__ import annotations

import pytest
import torch

from mch.api import MchError
from mch.capture import pool
from mch.model import Pool


def test_flat_rows_split_in_proportion_and_pool_to_each_samples_mean():
    torch.manual_seed(0)
    weights = [1, 3, 2]  # modality tokens per sample
    for factor in (1, 4):  # 4 rows per token: before a 2x2 patch merger
        h = torch.randn(sum(weights) * factor, 5)
        bounds = torch.tensor([0, 1, 4, 6]) * factor
        expected = torch.stack([h[bounds[i] : bounds[i + 1]].mean(0) for i in range(3)])
        p = Pool.proportional(weights)
        torch.testing.assert_close(pool(h, p, "modality", 3), expected)
        torch.testing.assert_close(pool(h, p, "all", 3), expected)
        last = torch.stack([h[bounds[i + 1] - 1] for i in range(3)])
        torch.testing.assert_close(pool(h, p, "last", 3), last)


def test_tiles_of_several_positions_split_by_row_and_for_output_lays_them_out():
    h = torch.randn(5, 4, 3)  # 5 tiles of 4 tokens: samples own 2, 1, 2 tiles
    p = Pool.proportional([8, 4, 8])
    expected = torch.stack([h[:2].reshape(-1, 3).mean(0), h[2].mean(0), h[3:].reshape(-1, 3).mean(0)])
    torch.testing.assert_close(pool(h, p, "modality", 3), expected)
    laid = p.for_output(h)
    assert laid.split is None and laid.owner.tolist() == [0, 0, 1, 2, 2] and laid.masks["all"].shape == (5, 4)
    torch.testing.assert_close(pool(h, laid, "modality", 3), expected)
    plain = Pool(torch.arange(2), {"all": torch.ones(2, 3, dtype=torch.bool)})
    assert plain.for_output(torch.randn(2, 3, 1)) is plain


def test_rows_that_do_not_split_are_one_clear_error():
    with pytest.raises(MchError, match="cannot be split"):
        pool(torch.randn(7, 2), Pool.proportional([1, 2]), "all", 2)
    with pytest.raises(MchError, match="shared by two samples"):
        Pool.proportional([1, 1]).for_output(torch.randn(1, 2, 3))
