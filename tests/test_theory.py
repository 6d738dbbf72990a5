"""Softmax-dilution model (this project's, not the paper's theorem)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from personadrift.analysis.theory import (
    Fit,
    fit_dilution,
    predicted_share,
    score_fit,
    sink_parts,
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
    assert np.allclose(predicted_share(3.0, 0.1, turns), 3.0 / (3.0 + 0.1 * turns.double().numpy()))
    assert predicted_share(2.0, 0.5, 4, S_0=2.0) == pytest.approx(1 / 3)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_synthetic_check_holds_for_the_estimator_used_on_real_data(seed):
    syn = synthetic_check(seed)
    pred, meas, lumped = (np.asarray(syn[k]) for k in ("predicted", "measured", "lumped"))
    assert syn["holds"] and (np.abs(pred - meas) <= syn["stated_error"][0]).all(), syn
    assert meas[-1] < meas[0] - 0.1  # the prompt really gets diluted
    # the sink matters: counting it among the other keys misses badly at small n
    assert np.abs(lumped - meas).max() > 2.5 * syn["stated_error"][0]
    assert syn["heldout_r2"] > syn["heldout_r2_lumped"]


def test_synthetic_check_detects_a_wrong_model():
    """Sanity: the fitted curve with c off by 30% falls outside the tolerance at the largest n."""
    syn = synthetic_check(0)
    f = syn["fit"]
    n = np.asarray(syn["n"], dtype=float)
    wrong = predicted_share(f["S_p"], 1.3 * f["c"], n, f["S_0"])
    assert abs(wrong[-1] - syn["measured"][-1]) > syn["stated_error"][0]


def test_fit_keeps_the_sink_apart():
    """Recorder fields of a planted head: S_p, S_0 and c are recovered; lumping the sink is wrong."""
    rng = np.random.default_rng(0)
    S_p, S_0, c = 5.0, 20.0, 0.03
    n = rng.integers(2, 2000, 4000).astype(float)  # n_other, the sink included
    S_rest = rng.gamma((n - 1) * 4.0, c / 4.0)
    S_other = S_0 + S_rest
    lsp = np.log(S_p) + 0.05 * rng.normal(size=n.size)
    first = S_0 / (np.exp(lsp) + S_other)
    fit = fit_dilution(lsp, np.log(S_other), n, first)
    assert fit.sink_apart and fit.S_0 == pytest.approx(S_0, rel=0.05)
    assert fit.S_p == pytest.approx(S_p, rel=0.02) and fit.c == pytest.approx(c, rel=0.02)
    assert fit.r2 > 0.95
    lumped = fit_dilution(lsp, np.log(S_other), n)
    assert lumped.r2 < fit.r2 - 0.05
    # scored on other entries of the same head
    held = score_fit(fit, lsp[:100], np.log(S_other[:100]), n[:100], first[:100])
    assert held[0] > 0.9 and held[2] == 100
    lp, lr, nr = sink_parts(lsp[:3], np.log(S_other[:3]), n[:3], first[:3])
    assert np.exp(lp) == pytest.approx(np.full(3, S_0)) and np.exp(lr) == pytest.approx(S_rest[:3])
    assert (nr == n[:3] - 1).all()


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


# --- the attention-stability link within conversations (analysis.attention) ---

def _panel(link: float, seed: int, G: int = 12, R: int = 8):
    """Attention and stability both fall with round and differ by conversation; ``link`` is the
    true within-conversation slope of stability on attention."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for g in range(G):
        a_lvl, s_lvl = rng.normal(0, 0.1), rng.normal(0, 0.2)
        for r in range(1, R + 1):
            att = 0.6 - 0.05 * r + a_lvl + rng.normal(0, 0.03)
            score = 0.8 - 0.06 * r + s_lvl + link * (att - 0.6 + 0.05 * r - a_lvl) + rng.normal(0, 0.05)
            rows.append({"conversation": g, "round": r, "prompt_share": att, "score": score})
    return pd.DataFrame(rows)


def test_within_association_is_not_fooled_by_common_trends():
    from personadrift.analysis.attention import within_conversation_association

    a = within_conversation_association(_panel(0.0, 0))
    assert a["pooled_r"] > 0.4  # the pooled correlation is large from the shared trend alone
    assert a["ci_low"] <= 0 <= a["ci_high"] and "fixed effects" in a["method"]
    b = within_conversation_association(_panel(1.5, 0))
    assert b["ci_low"] > 0 and b["ci_low"] <= 1.5 <= b["ci_high"] and b["partial_r"] > 0.3


def test_within_association_interval_coverage():
    """Over 200 seeded panels the t-interval covers the true slope within 0.06 of 0.95."""
    from personadrift.analysis.attention import within_conversation_association

    hits = [(lambda a: a["ci_low"] <= 1.0 <= a["ci_high"])(within_conversation_association(_panel(1.0, s, G=8)))
            for s in range(200)]
    assert abs(np.mean(hits) - 0.95) <= 0.06


def test_within_association_degenerate_inputs():
    import pandas as pd

    from personadrift.analysis.attention import within_conversation_association

    one = _panel(1.0, 0, G=1)
    assert np.isnan(within_conversation_association(one)["slope"])
    assert np.isnan(within_conversation_association(pd.DataFrame(
        {"conversation": [], "round": [], "prompt_share": [], "score": []}))["slope"])


def _tidy(seed: int = 0, convs: int = 4, length: int = 300):
    """Recorder-shaped rows: layer 0 follows the sink-apart dilution model, layer 1 does not."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for conv in range(convs):
        pos = np.arange(20, 20 + length)
        n = pos - 10.0  # other keys visible, the sink included
        for layer in (0, 1):
            for head in (0, 1):
                lsp = np.log(4.0) + 0.02 * rng.normal(size=pos.size)
                if layer == 0:
                    S_0, S_rest = 3.0, 0.02 * (n - 1) * np.exp(0.02 * rng.normal(size=pos.size))
                else:  # the prompt share wanders at random, unrelated to n
                    S_0, S_rest = 1.0, np.exp(rng.normal(1.0, 1.0, size=pos.size))
                S_o = S_0 + S_rest
                total = np.exp(lsp) + S_o
                rows.append(pd.DataFrame({
                    "conversation": conv, "position": pos, "entry": pos // 40, "round": pos // 80 + 1,
                    "speaker": np.where((pos // 40) % 2, "agent", "user"), "layer": layer, "head": head,
                    "prompt_share": np.exp(lsp) / total, "first_share": S_0 / total,
                    "log_S_prompt": lsp, "log_S_other": np.log(S_o), "n_other": n}))
    return pd.concat(rows, ignore_index=True)


def test_dilution_fit_scores_held_out_conversations_and_says_where_it_holds(tmp_path):
    from personadrift.analysis.attention import (
        dilution_fit,
        layer_verdicts,
        per_round,
        per_token,
    )
    from personadrift.figures import draw
    from personadrift.figures.attention import theory_verdict

    tidy = _tidy()
    curve, fits = dilution_fit(tidy)
    assert set(curve["conversation"]) == {2, 3} and not fits["in_sample"].any()
    assert (fits["fit_conversations"] == 2).all() and (fits["heldout_conversations"] == 2).all()
    v = layer_verdicts(fits).set_index("layer")
    assert v.loc[0, "explained"] and not v.loc[1, "explained"]
    l0 = fits[fits["layer"] == 0]
    assert np.allclose(l0["S_0"], 3.0, rtol=0.05) and np.allclose(l0["c"], 0.02, rtol=0.05)
    text = theory_verdict(fits)
    assert "explains the decay in layers 0" in text and "not in layers 1" in text
    paths = {k: tmp_path / f"{k}.csv" for k in ("curve", "fits", "tok")}
    curve.to_csv(paths["curve"], index=False)
    fits.to_csv(paths["fits"], index=False)
    (tmp_path / "syn.json").write_text(__import__("json").dumps(synthetic_check(0, n_queries=64)))
    draw("theory_attention_decay", [str(paths["curve"]), str(paths["fits"]), str(tmp_path / "syn.json")],
         [str(tmp_path / "theory.png")])
    # the attention decay figure reads its confidence from the table
    per_token(tidy).assign(confidence=0.8).to_csv(paths["tok"], index=False)
    lay = tidy.groupby(["layer", "round"], as_index=False)["prompt_share"].mean()
    lay.to_csv(tmp_path / "lay.csv", index=False)
    draw("attention_decay", [str(paths["tok"]), str(tmp_path / "lay.csv")], [str(tmp_path / "decay.png")])
    assert per_round(tidy)["round"].nunique() == 4


def test_attention_vs_stability_step_and_figure(tmp_path):
    from personadrift.figures import draw
    from personadrift.steps.attention import attention_vs_stability

    panel = _panel(1.0, 0, G=6, R=4)
    panel[["conversation", "round", "prompt_share"]].to_csv(tmp_path / "per_round.csv", index=False)
    scores = panel.assign(kind="agent", setting="none")[["setting", "conversation", "round", "kind", "score"]]
    scores = __import__("pandas").concat([scores, scores.assign(round=0, score=0.9).drop_duplicates("conversation")])
    scores.to_csv(tmp_path / "scores.csv", index=False)
    cfg = {"scoring": {"confidence": 0.9}, "model": {"name": "m"}, "seed": 0}
    attention_vs_stability(cfg, tmp_path / "per_round.csv", tmp_path / "scores.csv", tmp_path / "j.csv",
                           tmp_path / "j.json")
    a = __import__("json").loads((tmp_path / "j.json").read_text())
    from personadrift.analysis.attention import within_conversation_association

    assert a["n_points"] == 24 and a["confidence"] == 0.9 and a["ci_low"] > 0  # round 0 has no attention row
    assert a["slope"] == pytest.approx(within_conversation_association(panel)["slope"])
    draw("attention_vs_stability", [str(tmp_path / "j.csv"), str(tmp_path / "j.json")], [str(tmp_path / "a.png")])
