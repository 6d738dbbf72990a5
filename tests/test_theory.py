"""Softmax-dilution model (this project's, not the paper's theorem)."""

from __future__ import annotations

import math

import pytest
import torch

from personadrift.analysis.theory import (
    Fit,
    fit_dilution,
    predicted_share,
    synthetic_check,
)


def test_predicted_share_basics():
    assert predicted_share(2.0, 0.5, 0) == 1.0
    assert predicted_share(2.0, 0.5, 4) == pytest.approx(0.5)
    n = torch.arange(0, 100)
    s = predicted_share(3.0, 0.1, n)
    assert (s[1:] < s[:-1]).all()  # monotone decay
    # step-wise per turn: a turn that adds a block of tokens drops the share at the boundary
    turns = torch.tensor([0, 40, 80, 120])
    assert torch.allclose(predicted_share(3.0, 0.1, turns), 3.0 / (3.0 + 0.1 * turns.double()))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_synthetic_check_holds(seed):
    predicted, measured, err = synthetic_check(seed)
    assert predicted.shape == measured.shape == err.shape
    assert ((predicted - measured).abs() <= err).all(), (predicted, measured, err)
    assert measured[0] == 1.0 and measured[-1] < 0.8  # the prompt really gets diluted
    assert (err < 0.01).all()  # the stated error is tight enough to mean something


def test_synthetic_check_detects_a_wrong_model():
    """Sanity: a model with the wrong c (off by 30%) falls outside the stated error."""
    predicted, measured, err = synthetic_check(0)
    # recompute a wrong prediction from the identity share = 1 / (1 + c n / S_p): scale c n by 1.3
    odds = (1 - predicted) / predicted
    wrong = 1 / (1 + 1.3 * odds)
    assert ((wrong - measured).abs() > err)[2:].all()


def test_fit_recovers_known_parameters():
    g = torch.Generator().manual_seed(0)
    S_p, c = 5.0, 0.03
    n = torch.randint(1, 2000, (4000,), generator=g).double()
    # S_o: a sum of n positive weights with mean c (gamma with shape n*a has mean c*n)
    a = 4.0
    S_o = torch.distributions.Gamma(n * a, torch.full_like(n, a / c)).sample()
    log_S_p = math.log(S_p) + 0.05 * torch.randn(n.shape, generator=g, dtype=torch.float64)
    fit = fit_dilution(log_S_p, S_o.log(), n)
    assert isinstance(fit, Fit) and fit.n == 4000
    assert fit.S_p == pytest.approx(S_p, rel=0.02)
    assert fit.c == pytest.approx(c, rel=0.02)
    assert fit.r2 > 0.95 and fit.rmse < 0.03


def test_fit_skips_entries_without_other_or_prompt_keys():
    lsp = torch.tensor([float("-inf"), 0.0, 0.0, 0.0])
    lso = torch.tensor([0.0, float("-inf"), math.log(2.0), math.log(4.0)])
    n = torch.tensor([1.0, 0.0, 2.0, 4.0])
    fit = fit_dilution(lsp, lso, n)
    assert fit.n == 2 and fit.S_p == pytest.approx(1.0) and fit.c == pytest.approx(1.0)
    with pytest.raises(ValueError):
        fit_dilution(lsp[:2], lso[:2], n[:2])
