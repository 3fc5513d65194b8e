"""Known answers of the default protocol's statistics (science.md §1, §2, §7, §8; issue 13).

Each test is an experiment whose truth is known, with margins that fail when the estimator
measures something else:
- probe: pure-noise vectors with grouped folds and label shift -> I_probe's CI contains 0;
  Gaussian classes with known I -> covered at small d/N, below the truth at large d/N;
- GMI: a tempered exact decoder -> GMI = I at s* = 1/beta; a calibrated posterior under a
  skewed prior, one class's scores offset, a long verbalizer, synonyms -> gmi_lm = I within 1%;
  an uninformative decoder -> gmi_p below 0.05 in <= 8% of 100 runs;
- clustered data (per-speaker class bias) -> the group bootstrap's 95% CI covers the truth in
  >= 90% of 120 replications; the probe's version of it (slow) and a fast check of its CI
  width against the across-world spread.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import log_softmax, logsumexp

from mch.api import AnalysisSpec, Attribute, Sample
from mch.context import AnalysisContext
from mch.plugins.analyses import gmi as G, probe as P
from mch.plugins.analyses._stats import RowGroups, bias_corrected_ci

pytestmark = pytest.mark.usefixtures("blas_one_thread")

LN2 = np.log(2.0)


# --------------------------------------------------------------------------- helpers


def probe_run(X: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None, seed: int = 0, **params):
    probe = P.Probe(AnalysisSpec(name="probe", entry="mch.plugins.analyses.probe:Probe"))
    n = len(labels)
    cls = sorted({str(v) for v in labels})
    ctx = AnalysisContext(
        protocol="default",
        params={**probe.default_params("default"), **params},
        seed=seed,
        stages=["adapter"],
        reps={"adapter": X},
        samples=[Sample(sample_id=str(i), text="", labels={}, groups={}) for i in range(n)],
        attributes={"a": Attribute("a", cls, {c: [c] for c in cls}, "q", group_key="g")},
        labels={"a": np.asarray(labels, dtype=object)},
        groups={"a": np.asarray(groups if groups is not None else np.arange(n)).astype(str)},
    )
    out = probe.run(ctx)
    return {m.metric: m for m in out.metrics if m.stage == "adapter"}, out


def gaussian_classes(n: int, means: np.ndarray, prior: np.ndarray, rng: np.random.Generator):
    """Isotropic unit-variance Gaussian classes: labels and the exact log-likelihoods
    log p(x|y) (up to a constant shared by the classes)."""
    y = rng.choice(len(prior), size=n, p=prior)
    X = means[y] + rng.standard_normal((n, means.shape[1]))
    return X, y, -((X[:, None, :] - means[None]) ** 2).sum(-1) / 2


def pointwise_mi_bits(y: np.ndarray, loglik: np.ndarray, prior: np.ndarray) -> float:
    """mean of log p(x|y) / p(x) over the rows: the information these samples carry under the
    true law (its mean over the law is I(X; Y))."""
    return float(np.mean(loglik[np.arange(len(y)), y] - logsumexp(loglik + np.log(prior), axis=1)) / LN2)


MEANS4 = 1.8 * np.array([[0, 0], [1, 0], [0, 1], [1, 1.0]])


# --------------------------------------------------------------------------- probe (science.md §1)


def label_shift_world(seed: int, n_actors: int = 10, per: int = 60, d: int = 8):
    """Pure-noise vectors; 10 actors, each with its own emotion mix (grouped folds then shift
    the label prior between training and test parts)."""
    rng = np.random.default_rng(seed)
    mix = rng.dirichlet(np.full(4, 0.7), size=n_actors)
    actor = np.repeat(np.arange(n_actors), per)
    y = np.concatenate([rng.choice(4, size=per, p=mix[a]) for a in range(n_actors)])
    return rng.standard_normal((len(y), d)).astype(np.float32), np.array([f"e{v}" for v in y]), actor


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noise_with_label_shift_has_i_probe_zero(seed):
    """V-information against the held-out intercept-only model is ~0 on noise; the old H(Y) - CE
    is biased negative under grouped folds (issue 13: -0.053 [-0.071, -0.035] and alike)."""
    X, labels, actor = label_shift_world(seed)
    m, out = probe_run(X, labels, actor)
    ip = m["i_probe_bits"]
    assert ip.ci_low <= 0.0 <= ip.ci_high, ip
    assert abs(ip.value) < 0.02 and ip.n_groups == 10
    assert out.summary["attributes"]["a"]["split"] == "grouped"
    # the prior-based number is still reported, under its own name, and it is the biased one
    assert m["i_probe_prior_bits"].value < -0.03


def five_gaussians(rng: np.random.Generator) -> np.ndarray:
    means = np.zeros((5, 4))
    means[1:, :] = np.eye(4)
    return 1.5 * means


def test_i_probe_gaussian_mi_covered_at_small_d_over_n_and_below_at_large():
    """5 Gaussian classes (true I 0.83 bits, as in issue 13): with 4 informative + 4 noise
    dimensions and N = 2000 (d/N = 0.004) the CI covers the Monte-Carlo truth; with N = 600 and
    300 more noise dimensions (d/N = 0.5) I_probe is a loose lower bound (its CI lies below the
    truth, never above; issue 13: 0.15-0.29), and the record says d and N. (At N = 600 and d = 8
    the held-out estimate already sits ~0.05 bits under the sample's information, a lower
    bound's slack of the size of its CI.)"""
    rng = np.random.default_rng(11)
    means = five_gaussians(rng)
    prior = np.full(5, 0.2)
    Xb, yb, llb = gaussian_classes(400_000, means, prior, rng)
    truth = pointwise_mi_bits(yb, llb, prior)
    assert 0.78 < truth < 0.88
    X, y, _ = gaussian_classes(2000, means, prior, rng)
    small = np.concatenate([X, rng.standard_normal((2000, 4))], 1).astype(np.float32)
    ip, out = probe_run(small, np.array([f"k{v}" for v in y]), control=False)
    assert ip["i_probe_bits"].ci_low <= truth <= ip["i_probe_bits"].ci_high, (truth, ip["i_probe_bits"])
    assert any("d/N" in n and "d = 8" in n and "N = 2000" in n for n in out.notes)
    X, y, _ = gaussian_classes(600, means, prior, rng)
    large = np.concatenate([X, rng.standard_normal((600, 304))], 1).astype(np.float32)
    ip, out = probe_run(large, np.array([f"k{v}" for v in y]), control=False)
    assert ip["i_probe_bits"].ci_high < truth, (truth, ip["i_probe_bits"])
    assert any("d = 308" in n and "N = 600" in n for n in out.notes)


def test_control_task_is_near_chance_and_selectivity_is_the_difference():
    """The control task (labels permuted across groups) of an informative probe sits near
    chance, below the real probe; selectivity = acc - acc_control; the control is off on request."""
    rng = np.random.default_rng(5)
    means = five_gaussians(rng) * 1.5
    X, y, _ = gaussian_classes(500, means, np.full(5, 0.2), rng)
    X = X.astype(np.float32)
    labels = np.array([f"k{v}" for v in y])
    groups = np.repeat(np.arange(50), 10)
    m, out = probe_run(X, labels, groups)
    assert m["control_accuracy"].value < 0.3 < m["accuracy"].value
    assert m["control_i_probe_bits"].value < 0.05 < m["i_probe_bits"].value
    assert m["selectivity"].value == pytest.approx(m["accuracy"].value - m["control_accuracy"].value)
    assert m["selectivity"].ci_low > 0
    assert (
        out.summary["attributes"]["a"]["stages"]["adapter"]["control_fits"]["fits"] == 6
    )  # 5 folds + their all-rows start
    off, _ = probe_run(X, labels, groups, control=False)
    assert "control_accuracy" not in off and off["accuracy"].value == m["accuracy"].value


def test_repeats_average_seeds_and_widen_nothing_they_should_not():
    """n_repeats = 3: the point is the mean over three grouped CVs; each seed alone is one of
    them; the CI still brackets the point."""
    rng = np.random.default_rng(6)
    X, y, _ = gaussian_classes(300, five_gaussians(rng), np.full(5, 0.2), rng)
    labels = np.array([f"k{v}" for v in y])
    groups = np.repeat(np.arange(30), 10)
    many, _ = probe_run(X.astype(np.float32), labels, groups, n_repeats=3, control=False)
    one = [
        probe_run(X.astype(np.float32), labels, groups, seed=s, control=False)[0]["accuracy"].value for s in range(3)
    ]
    assert many["accuracy"].value == pytest.approx(np.mean(one))
    assert many["accuracy"].ci_low <= many["accuracy"].value <= many["accuracy"].ci_high


# --------------------------------------------------------------------------- GMI and the LM rate (science.md §2)


@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_tempered_exact_decoder_has_gmi_equal_to_i_at_one_over_beta(beta):
    """q = p(x|y)^beta (uniform prior: the posterior tempered): GMI = I, reached at s* = 1/beta."""
    rng = np.random.default_rng(1)
    prior = np.full(4, 0.25)
    X, y, ll = gaussian_classes(20_000, MEANS4, prior, rng)
    truth = pointwise_mi_bits(y, ll, prior)
    logq = beta * log_softmax(ll, axis=1)
    r = G.evaluate(logq, y, 4, n_boot=0, seed=0, s_max=1e4)
    assert r["gmi_bits"] == pytest.approx(truth, rel=2e-3)
    assert r["s_star"] == pytest.approx(1 / beta, rel=0.03)  # the sample's own maximiser


def skewed_posterior(n: int = 20_000, seed: int = 2):
    prior = np.array([0.7, 0.1, 0.1, 0.1])
    rng = np.random.default_rng(seed)
    X, y, ll = gaussian_classes(n, MEANS4, prior, rng)
    return y, ll, prior, log_softmax(ll + np.log(prior), axis=1)


def uniform_posterior(n: int = 20_000, seed: int = 3):
    prior = np.full(4, 0.25)
    rng = np.random.default_rng(seed)
    X, y, ll = gaussian_classes(n, MEANS4, prior, rng)
    return y, ll, prior, log_softmax(ll, axis=1)


def _decoders():
    """(name, y, loglik, prior, log q): decoders that know everything but carry a per-class bias."""
    y, ll, prior, post = skewed_posterior()
    yield "calibrated posterior, skewed prior", y, ll, prior, post
    y, ll, prior, post = uniform_posterior()
    off = post.copy()
    off[:, 2] += 2.0  # one class's scores offset by +2 nats
    yield "one class offset", y, ll, prior, off
    # class 0 verbalized by 3 tokens: its first token carries the posterior, the next two
    # have probabilities 0.4 and 0.6 (q = product, the default "sum" of log-probs)
    logp = np.concatenate([post[:, :1] + np.log(0.4) + np.log(0.6), post[:, 1:]], 1)
    yield (
        "3-token verbalizer",
        y,
        ll,
        prior,
        G.class_log_q(logp, np.array([3.0, 1, 1, 1]), [(0, 1), (1, 2), (2, 3), (3, 4)]),
    )
    # class 1 has 4 synonyms, each scored near the class's posterior (no mass split among them)
    logp = np.concatenate([post[:, :1], post[:, 1:2] + np.log([1.0, 0.8, 0.6, 0.5])[None], post[:, 2:]], 1)
    yield "4 synonyms", y, ll, prior, G.class_log_q(logp, np.ones(7), [(0, 1), (1, 5), (5, 6), (6, 7)])


@pytest.mark.parametrize("case", list(range(4)))
def test_lm_rate_recovers_i_where_plain_gmi_charges_answer_bias(case):
    """gmi_lm = I within 1% for a decoder whose only flaw is a per-class bias (skewed prior,
    offset class, long verbalizer, synonyms); plain GMI falls short (issue 13: 0.628 / 0.693 /
    1.131 / 1.197 against 0.810 / 1.223): their gap is the decoder's answer bias."""
    name, y, ll, prior, logq = list(_decoders())[case]
    truth = pointwise_mi_bits(y, ll, prior)
    r = G.evaluate(logq, y, 4, n_boot=200, seed=0, s_max=1e4)
    assert r["gmi_lm_bits"] == pytest.approx(truth, rel=0.01), (name, r["gmi_lm_bits"], truth)
    assert r["gmi_bits"] < 0.97 * truth, (name, r["gmi_bits"], truth)
    assert r["lm_ci"][0] <= r["gmi_lm_bits"] <= r["lm_ci"][1]


def test_lm_rate_is_at_least_gmi_and_zero_for_noise():
    rng = np.random.default_rng(4)
    for _ in range(5):
        y = rng.integers(0, 5, 400)
        logq = rng.normal(size=(400, 5)) + 0.8 * np.eye(5)[y] * rng.random()
        prior = np.bincount(y, minlength=5) / 400
        assert G.lm_rate(logq, y, 5)["bits"] >= G.maximise_gmi(logq, y, prior)[0] - 1e-9
    flat = np.zeros((300, 3))
    assert G.lm_rate(flat, rng.integers(0, 3, 300), 3)["bits"] == 0.0


def test_lm_rate_replicates_match_a_full_fit():
    """The bootstrap's chord-Newton replicates equal an exact fit on each reweighting."""
    y, ll, prior, post = uniform_posterior(n=2000, seed=7)
    logq = post.copy()
    logq[:, 0] += 1.0
    fit = G.lm_rate(logq, y, 4)
    w = RowGroups(np.repeat(np.arange(200), 10), 200, 3, "g").weights(20)
    reps = G.lm_rate_replicates(logq, y, 4, w, fit)
    exact = np.array([G.lm_rate(logq, y, 4, w=wb)["bits"] for wb in w])
    np.testing.assert_allclose(reps, exact, rtol=1e-6, atol=1e-9)


def test_lm_rate_replicates_match_a_full_fit_where_chord_steps_diverge():
    """A small, confident decoder that rarely says one class (the toy's content scores' shape,
    n = 100, K = 8): chord steps from the point fit diverged there (5 of 300 replicates at 0
    bits, the worst 2.9 bits off), which dragged the CI's lower end to 0; each replicate must
    still equal an exact fit on its weights."""
    rng = np.random.default_rng(11)
    n, k = 100, 8
    y = rng.integers(0, k, n)
    z = rng.normal(size=(n, k)) + 4.0 * np.eye(k)[y]
    z[:, 6] -= 3.0
    logq = z - np.logaddexp.reduce(z, axis=1, keepdims=True)
    fit = G.lm_rate(logq, y, k)
    w = RowGroups(np.arange(n), n, 5, "sample").weights(300)
    reps = G.lm_rate_replicates(logq, y, k, w, fit)
    exact = np.array([G.lm_rate(logq, y, k, w=wb)["bits"] for wb in w])
    assert exact.min() > 1.0  # the truth: every reweighting keeps most of the content
    np.testing.assert_allclose(reps, exact, atol=1e-6)


def test_lm_rate_under_a_resample_that_drew_no_row_of_a_class():
    """Rows of weight 0 whose class the resample did not draw drop out (they gave 0 * inf =
    NaN, and the Newton loop then ran to max_iter on every such replicate: a smoke LLaVA's
    bench did not finish in 10 minutes)."""
    rng = np.random.default_rng(3)
    n, k = 60, 4
    y = np.r_[np.zeros(2, int), rng.integers(1, k, n - 2)]
    z = rng.normal(size=(n, k)) + 3.0 * np.eye(k)[y]
    logq = z - np.logaddexp.reduce(z, axis=1, keepdims=True)
    w = np.ones(n)
    w[:2], w[2:10] = 0, 2
    keep = w > 0
    got = G.lm_rate(logq, y, k, w=w)["bits"]
    assert np.isfinite(got) and got > 0.5
    assert got == pytest.approx(G.lm_rate(logq[keep], y[keep], k, w=w[keep])["bits"], abs=1e-12)


def test_an_uninformative_decoder_has_a_uniform_permutation_p():
    """n = 200, K = 4, 20 speakers with their own label mixes and their own (label-free) answer
    biases: gmi_p < 0.05 in at most 8% of 100 runs, and about half of the p-values are below
    0.5 (a test that never rejects would pass the first check alone). "The CI excludes 0" is no
    such test (issue 13: it fired in 10.5% of null runs with a row bootstrap)."""
    rng = np.random.default_rng(8)
    small_p = below_half = 0
    runs = 100
    for r in range(runs):
        spk = np.repeat(np.arange(20), 10)
        mix = rng.dirichlet(np.full(4, 1.0), size=20)
        y = np.concatenate([rng.choice(4, size=10, p=mix[s]) for s in range(20)])
        logq = rng.normal(0, 1.0, size=(20, 4))[spk] + rng.normal(size=(200, 4))
        g = RowGroups(spk, 20, int(rng.integers(1 << 30)), "speaker")
        res = G.evaluate(logq, y, 4, n_boot=200, seed=r, s_max=1e4, groups=g, n_perm=200)
        small_p += res["gmi_p"] < 0.05
        below_half += res["gmi_p"] < 0.5
    assert small_p <= 0.08 * runs, small_p
    assert 0.35 * runs <= below_half <= 0.65 * runs, below_half


def test_permutation_p_is_small_for_an_informative_decoder():
    y, ll, prior, post = uniform_posterior(n=300, seed=9)
    g = RowGroups(np.repeat(np.arange(30), 10), 30, 0, "speaker")
    p, obs = G.permutation_p(0.3 * post, y, 4, g.codes, 200, 0, 1e4)
    assert p == pytest.approx(1 / 201) and obs > 0.1


# --------------------------------------------------------------------------- GMI at its ceiling (science.md §8)
#
# An exact decoder's GMI (and LM rate) is the label entropy H(P): the population's truth is
# H of the population prior. The plug-in H(P-hat) is biased low, and a resample's prior has a
# lower entropy still, so the plain percentile interval lies below the point (and the truth).


def exact_decoder(y: np.ndarray, k: int) -> np.ndarray:
    return np.where(np.eye(k)[y] > 0, 0.0, -30.0)


def test_exact_decoder_ci_holds_its_point():
    """A perfect decoder on a balanced sample (GMI = H(Y) = 2 bits, n = 100): the CIs of gmi_bits
    and gmi_lm_bits hold the point (the plain percentile interval: [1.940, 1.998])."""
    y = np.repeat(np.arange(4), 25)
    r = G.evaluate(exact_decoder(y, 4), y, 4, 400, 0, 1e4, groups=RowGroups(np.arange(100), 100, 0, "row"))
    assert r["gmi_bits"] == pytest.approx(2.0) and r["gmi_lm_bits"] == pytest.approx(2.0)
    assert r["ci"][0] < r["gmi_bits"] <= r["ci"][1] == 2.0, r["ci"]  # the upper end clipped at log2 K
    assert r["lm_ci"][0] < r["gmi_lm_bits"] <= r["lm_ci"][1] == 2.0, r["lm_ci"]


def test_exact_decoder_ci_covers_the_population_label_entropy():
    """100 samples of 50 two-row groups from a uniform 4-class population, an exact decoder:
    the GMI CI covers the population's GMI, H(Y) = 2 bits, in >= 90% of 100 replications and
    holds its own point in all (the plain percentile interval: 0%)."""
    rng = np.random.default_rng(5)
    cover = inside = 0
    for r in range(100):
        y = rng.integers(0, 4, 100)
        logq = exact_decoder(y, 4)
        g = RowGroups(np.arange(100) // 2, 50, r, "pair")
        point = G.maximise_gmi(logq, y, np.bincount(y, minlength=4) / 100)[0]
        lo, hi = bias_corrected_ci(G.bootstrap_gmi(logq, y, 4, g.weights(400), 1e4), point)
        cover += lo <= 2.0 <= hi
        inside += lo <= point <= hi
    assert inside == 100
    assert cover >= 90, cover


def test_gmi_cis_stay_inside_zero_to_log2_k():
    """GMI and the LM rate lie in [0, log2 K]; the bias shift must not carry a CI end outside.
    An uninformative decoder (GMI near 0, replicates biased up) put the lower end below 0 in
    most of these runs before the ends were clipped (the toy's speaker: [-0.0004, 0.0051]),
    and an exact decoder at the ceiling its upper end above log2 K."""
    rng = np.random.default_rng(2)
    below = above = 0
    for r in range(20):
        y = rng.integers(0, 4, 200)
        r_null = G.evaluate(rng.standard_normal((200, 4)), y, 4, 200, r, 1e4)
        r_top = G.evaluate(exact_decoder(y, 4), y, 4, 200, r, 1e4)
        for res in (r_null, r_top):
            for lo, hi in (res["ci"], res["lm_ci"]):
                below += lo < 0
                above += hi > 2.0
                assert 0.0 <= lo <= hi <= 2.0
        assert r_null["ci"][0] <= r_null["gmi_bits"] <= r_null["ci"][1]
    assert below == above == 0


# --------------------------------------------------------------------------- clustered data (science.md §8)


def speaker_biased_world(n_spk: int, per: int, rng: np.random.Generator):
    """Each speaker has its own label mix and its own per-class answer bias in the decoder's
    scores (a group effect); the decoder's signal is the same for everyone."""
    spk = np.repeat(np.arange(n_spk), per)
    mix = rng.dirichlet(np.full(4, 2.0), size=n_spk)
    y = np.concatenate([rng.choice(4, size=per, p=mix[s]) for s in range(n_spk)])
    logq = np.eye(4)[y] + rng.standard_normal((n_spk, 4))[spk] + rng.standard_normal((len(y), 4))
    return logq, y, spk


def gmi_coverage(reps: int, seed: int, by_group: bool, n_boot: int = 400) -> float:
    rng = np.random.default_rng(seed)
    logq, y, _ = speaker_biased_world(20_000, 10, rng)
    truth = G.maximise_gmi(logq, y, np.bincount(y, minlength=4) / len(y))[0]
    hits = 0
    for r in range(reps):
        logq, y, spk = speaker_biased_world(30, 10, rng)
        g = RowGroups(spk, 30, r, "speaker") if by_group else RowGroups(np.arange(len(y)), len(y), r, "row")
        lo, hi = G.evaluate(logq, y, 4, n_boot, r, 1e4, groups=g)["ci"]
        hits += lo <= truth <= hi
    return hits / reps


def test_group_bootstrap_covers_gmi_on_clustered_data():
    """Per-speaker answer bias, 30 speakers x 10 samples, 120 replications: the group bootstrap's
    95% CI covers the population GMI in >= 90% of them (issue 13: a row bootstrap, 79%)."""
    assert gmi_coverage(120, 0, by_group=True) >= 0.90


@pytest.mark.slow
def test_row_bootstrap_undercovers_the_same_clustered_gmi():
    """The contrast, slow: the same experiment resampling rows covers clearly less."""
    assert gmi_coverage(120, 0, by_group=False) < 0.88


def emotion_world(seed: int, n_spk: int = 24, per: int = 20, d: int = 6):
    """Speaker-specific emotion expression: each speaker (drawn anew in every world from one
    population) expresses the emotions with its own strength and has its own label-free
    offset, so a probe's held-out performance depends on which speakers were drawn."""
    base = np.random.default_rng(0).standard_normal((4, d))  # the population: the same in every world
    rng = np.random.default_rng(seed)
    spk = np.repeat(np.arange(n_spk), per)
    y = rng.integers(0, 4, len(spk))
    strength = rng.uniform(0.2, 1.6, n_spk)
    X = strength[spk, None] * base[y] + rng.standard_normal((n_spk, d))[spk] + rng.standard_normal((len(spk), d))
    return X.astype(np.float32), np.array([f"e{v}" for v in y]), spk


def probe_worlds(n_worlds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vals, lo, hi = [], [], []
    for w in range(n_worlds):
        X, labels, spk = emotion_world(100 + w)
        m, _ = probe_run(X, labels, spk, seed=w, control=False, n_bootstrap=400)
        vals.append(m["i_probe_bits"].value)
        lo.append(m["i_probe_bits"].ci_low)
        hi.append(m["i_probe_bits"].ci_high)
    return np.array(vals), np.array(lo), np.array(hi)


def test_probe_ci_width_matches_the_spread_across_worlds():
    """Fast version of the probe's coverage experiment: over 12 independent worlds the CIs'
    implied standard error is of the size of I_probe's spread across worlds (issue 13, row
    bootstrap: 0.046 against 0.139, a third; here 0.41 before, 0.7-0.9 after)."""
    vals, lo, hi = probe_worlds(12)
    implied = np.mean(hi - lo) / (2 * 1.96)
    assert implied >= 0.6 * vals.std(ddof=1), (implied, vals.std(ddof=1))


@pytest.mark.slow
def test_probe_group_bootstrap_covers_the_across_world_mean():
    """100 worlds: the group-bootstrap CI of I_probe covers the across-world mean in >= 85%.

    Not the >= 90% of GMI's test: the probe's CI resamples held-out predictions without
    refitting (the fitted fold probes held fixed), so it leaves out how the fits move with the
    training speakers, about 15% of the spread here (measured: CI-implied SE / across-world SD
    0.73-0.87 in four variants of this world, coverage 0.86-0.91; a row bootstrap 0.41)."""
    vals, lo, hi = probe_worlds(100)
    target = vals.mean()
    assert np.mean((lo <= target) & (target <= hi)) >= 0.85


def test_lm_rate_replicates_that_drew_no_row_of_a_class_warn_nothing():
    """A replicate that drew no row of a class: its rows weigh 0 (no NaN reaches the value) and
    numpy prints no 'invalid value encountered in multiply' on the user's terminal (a smoke
    LLaVA bench did), while the replicate still equals an exact fit on its weights."""
    import warnings

    rng = np.random.default_rng(3)
    n, k = 60, 4
    y = np.r_[np.zeros(2, int), rng.integers(1, k, n - 2)]
    z = rng.normal(size=(n, k)) + 3.0 * np.eye(k)[y]
    logq = z - np.logaddexp.reduce(z, axis=1, keepdims=True)
    w = np.ones((3, n))
    w[0, :2], w[0, 2:10] = 0, 2  # class 0 not drawn
    w[1, 5:9] = 3
    fit = G.lm_rate(logq, y, k)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reps = G.lm_rate_replicates(logq, y, k, w, fit)
    exact = np.array([G.lm_rate(logq, y, k, w=wb)["bits"] for wb in w])
    np.testing.assert_allclose(reps, exact, atol=1e-6)
