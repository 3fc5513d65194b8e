"""GMI through a decoder's scoring rule against closed forms (science.md §2, §7).

- A symmetric channel decoder (q = 1 - eps on its guess, eps/(K-1) elsewhere, guess right
  with probability 1 - eps, uniform prior): GMI = log K - h(eps) - eps log(K-1) at s* = 1.
- GMI(0) = 0, GMI >= 0, concavity; an uninformative q gives GMI ~ 0.
- Through the analysis with a fake model: verbalizers combine by logsumexp, `mean`
  normalises per token, scores are batched and cached (a second run never loads the
  model), the text reference uses view="text", accessibility divides by the probe's I_probe.
"""

from __future__ import annotations

import numpy as np
import pytest

from mch.api import AnalysisOutput, AnalysisSpec, Attribute, MchError, Metric, Sample
from mch.context import AnalysisContext
from mch.model import Scores
from mch.plugins.analyses import gmi as G
from mch.plugins.analyses._stats import percentile_ci
from mch.results import build_record, validate


def channel(k: int, eps: float, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact proportions: each class has per_class rows, a fraction eps of them guessed
    wrong, spread evenly over the other classes; log q from the guess."""
    n_wrong = round(eps * per_class)
    assert n_wrong % (k - 1) == 0 and abs(n_wrong / per_class - eps) < 1e-12
    y, guess = [], []
    for c in range(k):
        others = [o for o in range(k) if o != c]
        y += [c] * per_class
        guess += [c] * (per_class - n_wrong) + [o for o in others for _ in range(n_wrong // (k - 1))]
    y, guess = np.array(y), np.array(guess)
    logq = np.full((len(y), k), np.log(eps / (k - 1)))
    logq[np.arange(len(y)), guess] = np.log(1 - eps)
    return logq, y


def closed_form_bits(k: int, eps: float) -> float:
    h = -(eps * np.log2(eps) + (1 - eps) * np.log2(1 - eps))
    return float(np.log2(k) - h - eps * np.log2(k - 1))


@pytest.mark.parametrize("k,eps", [(4, 0.3), (6, 0.1), (2, 0.25)])
def test_symmetric_channel_has_its_closed_form_gmi_at_s_one(k, eps):
    logq, y = channel(k, eps, per_class=60 * (k - 1))
    prior = np.full(k, 1 / k)
    g, s_star, capped = G.maximise_gmi(logq, y, prior)
    assert g == pytest.approx(closed_form_bits(k, eps), abs=1e-9)
    assert s_star == pytest.approx(1.0, abs=1e-6) and not capped
    assert G.gmi_bits(logq, y, prior, 1.0) == pytest.approx(closed_form_bits(k, eps), abs=1e-12)
    r = G.evaluate(logq, y, k, n_boot=300, seed=0, s_max=1e4)
    assert r["ci"][0] <= r["gmi_bits"] <= r["ci"][1]
    assert r["confusion"][0][0] == round((1 - eps) * 60 * (k - 1))


def test_gmi_is_zero_at_zero_nonnegative_and_concave():
    rng = np.random.default_rng(0)
    logq = rng.normal(size=(300, 5)) * 2
    y = rng.integers(0, 5, 300)
    prior = np.bincount(y, minlength=5) / 300
    assert G.gmi_bits(logq, y, prior, 0.0) == pytest.approx(0.0, abs=1e-15)
    s = np.linspace(0, 5, 51)
    curve = np.array([G.gmi_bits(logq, y, prior, t) for t in s])
    assert np.all(np.diff(curve, 2) <= 1e-12)  # concave on a grid
    g, s_star, _ = G.maximise_gmi(logq, y, prior)
    assert g >= 0 and g >= curve.max() - 1e-9
    # a q that ranks the classes backwards: best s is 0 and GMI is exactly 0
    bad = np.where(np.arange(5)[None, :] == y[:, None], -10.0, 0.0)
    assert G.maximise_gmi(bad, y, prior)[:2] == (0.0, 0.0)


def test_an_uninformative_decoder_has_gmi_near_zero():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 4000)
    logq = np.log(rng.dirichlet(np.ones(4), size=4000))  # independent of y
    r = G.evaluate(logq, y, 4, n_boot=300, seed=0, s_max=1e4)
    assert r["gmi_bits"] < 0.005 and r["ci"][0] <= 0.005


def test_a_perfect_decoder_is_capped_at_the_label_entropy():
    y = np.repeat(np.arange(3), 20)
    logq = np.where(np.arange(3)[None, :] == y[:, None], 0.0, -5.0)
    g, s_star, capped = G.maximise_gmi(logq, y, np.full(3, 1 / 3), s_max=50.0)
    assert capped and s_star == 50.0 and g == pytest.approx(np.log2(3), abs=1e-6)


def test_class_log_q_combines_verbalizers_and_normalises():
    logp = np.log(np.array([[0.1, 0.2, 0.3], [0.05, 0.05, 0.5]]))
    ntok = np.array([1.0, 2.0, 3.0])
    spans = [(0, 2), (2, 3)]
    np.testing.assert_allclose(G.class_log_q(logp, ntok, spans, "sum"), np.log([[0.3, 0.3], [0.1, 0.5]]))
    mean = G.class_log_q(logp, ntok, spans, "mean")
    np.testing.assert_allclose(mean[:, 1], logp[:, 2] / 3)
    np.testing.assert_allclose(mean[0, 0], np.logaddexp(np.log(0.1), np.log(0.2) / 2))
    with pytest.raises(MchError):
        G.class_log_q(logp, ntok, spans, "max")


# --------------------------------------------------------------------------- through the analysis


class FakeModel:
    """A decoder whose scores for each sample are a fixed table: class c's two verbalizers
    share q(c|x) equally, so logsumexp over them gives back log q. `text` scores give the
    true class 0.9 on every sample (a perfect ranker)."""

    def __init__(self, logq_modal: np.ndarray, y: np.ndarray, k: int):
        self.logq = {"modal": logq_modal}
        text = np.full((len(y), k), np.log(0.1 / (k - 1)))
        text[np.arange(len(y)), y] = np.log(0.9)
        self.logq["text"] = text
        self.calls: list[tuple[int, str]] = []

    def score(self, samples, query, continuations, protocol, view="modal"):
        assert query == "The speaker sounds" and protocol == "default"
        self.calls.append((len(samples), view))
        rows = [int(s.sample_id) for s in samples]
        lq = self.logq[view][rows]
        return Scores(logp=np.repeat(lq, 2, axis=1) - np.log(2), n_tokens=np.ones(len(continuations)))


def gmi_context(model, logq, y, k, cache, previous=None, params=None, texts=None, groups=None, verbalizable=True):
    classes = [f"c{i}" for i in range(k)]
    attr = Attribute(
        "emotion",
        classes,
        {c: [c, c + "ish"] for c in classes},
        "The speaker sounds",
        group_key="actor",
        text_describable=True,
        verbalizable=verbalizable,
    )
    n = len(y)
    labels = np.array([classes[v] for v in y], dtype=object)
    labels[-1] = ""  # one unlabelled sample: not scored
    texts = texts if texts is not None else [f"text {i}" for i in range(n)]
    samples = [Sample(sample_id=str(i), text=texts[i], labels={}, groups={}) for i in range(n)]
    loads = []

    def loader():
        loads.append(1)
        return model

    def cached(name, key, compute):
        import json

        k_ = name + json.dumps(key, sort_keys=True)
        if k_ not in cache:
            cache[k_] = np.asarray(compute())
        return cache[k_]

    g = G.GMI(AnalysisSpec(name="gmi", entry="mch.plugins.analyses.gmi:GMI", needs_model=True))
    ctx = AnalysisContext(
        protocol="default",
        params={**g.default_params("default"), **(params or {})},
        seed=0,
        stages=["adapter", "llm.final"],
        reps={},
        samples=samples,
        attributes={"emotion": attr},
        labels={"emotion": labels},
        groups={"emotion": np.array(["a"] * n if groups is None else groups, dtype=object)},
        previous=previous or {},
        _model_loader=loader,
        _cache=cached,
    )
    return g, ctx, loads


def validate_record(ctx, out, n: int) -> None:
    """The run's output as a result record, checked against the record schema."""
    rec = build_record(
        model={"name": "fake", "modality": "speech", "checkpoint": "x"},
        dataset={"name": "d", "n": n, "sample_ids_sha256": None},
        analysis={"name": "gmi", "params": ctx.params},
        protocol="default",
        extraction={},
        seeds=[0],
        config_hash="0",
        duration_s=0.1,
        metrics=[x.as_dict() for x in out.metrics],
        summary=out.summary,
        notes=out.notes,
    )
    validate(rec)


def test_the_analysis_measures_the_closed_form_and_caches_scores():
    k, eps = 4, 0.3
    logq, y = channel(k, eps, per_class=90)
    logq = np.vstack([logq, logq[:1]])  # + the unlabelled sample
    y = np.append(y, 0)
    model = FakeModel(logq, y, k)
    probe = AnalysisOutput(
        metrics=[Metric("i_probe_bits", 1.5, "adapter", "emotion"), Metric("i_probe_bits", 0.0, "llm.final", "emotion")]
    )
    cache: dict = {}
    g, ctx, loads = gmi_context(model, logq, y, k, cache, previous={"probe": probe}, params={"batch_size": 50})
    out = g.run(ctx)
    m = {(x.metric, x.stage): x for x in out.metrics}
    truth = closed_form_bits(k, eps)
    assert m[("gmi_bits", "llm.final")].value == pytest.approx(truth, abs=1e-9)
    assert m[("gmi_bits", "llm.final")].n == len(y) - 1
    assert m[("s_star", "llm.final")].value == pytest.approx(1.0, abs=1e-6)
    assert m[("accessibility", "adapter")].value == pytest.approx(truth / 1.5)
    assert m[("accessibility", "llm.final")].value is None  # I_probe <= 0: undefined
    # the text reference (view="text") always ranks the true class first: GMI rises to H(Y)
    # (s* is where the curve is flat to float precision)
    assert m[("text_gmi_bits", "llm.final")].value == pytest.approx(np.log2(k), abs=1e-6)
    assert m[("text_s_star", "llm.final")].value >= 8
    assert {v for _, v in model.calls} == {"modal", "text"}
    assert all(b <= 50 for b, _ in model.calls) and sum(b for b, v in model.calls if v == "modal") == len(y) - 1
    assert loads == [1]
    info = out.summary["attributes"]["emotion"]
    assert np.sum(info["modal"]["confusion"]) == len(y) - 1 and out.summary["normalize"] == "sum"
    # a second run reads the cache and never loads the model
    calls = len(model.calls)
    g2, ctx2, loads2 = gmi_context(model, logq, y, k, cache, params={"batch_size": 50})
    out2 = g2.run(ctx2)
    assert loads2 == [] and len(model.calls) == calls
    assert [x.value for x in out2.metrics if x.metric == "gmi_bits"] == [m[("gmi_bits", "llm.final")].value]


def test_text_reference_skips_samples_without_text_and_records_validate():
    k = 3
    logq, y = channel(k, 0.2, per_class=40)
    logq, y = np.vstack([logq, logq[:1]]), np.append(y, 0)
    texts = [""] * 10 + [f"t{i}" for i in range(10, len(y))]
    g, ctx, _ = gmi_context(FakeModel(logq, y, k), logq, y, k, {}, params={"n_bootstrap": 100}, texts=texts)
    out = g.run(ctx)
    text = [x for x in out.metrics if x.metric == "text_gmi_bits"][0]
    assert text.n == len(y) - 1 - 10
    validate_record(ctx, out, len(y))


def test_parameters_are_checked():
    logq, y = channel(3, 0.2, per_class=20)
    for params, msg in (({"normalise": "sum"}, "no parameter 'normalise'"), ({"normalize": "max"}, "sum or mean")):
        g, ctx, _ = gmi_context(FakeModel(logq, y, 3), logq, y, 3, {}, params=params)
        with pytest.raises(MchError, match=msg):
            g.run(ctx)


def test_lm_rate_permutation_p_and_accessibility_cis_from_the_probes_draws():
    """gmi_lm_bits and gmi_p are reported beside gmi_bits; accessibility and accessibility_lm at
    adapter and llm.final take their CIs replicate by replicate from the probe's replicates of
    I_probe on the same group draws (science.md §8); records validate."""
    from mch.plugins.analyses._stats import attribute_groups, groups_identity

    k, eps = 4, 0.3
    logq, y = channel(k, eps, per_class=90)
    logq[:, 0] += 1.0  # an answer bias: the LM rate recovers what GMI charges to it
    logq, y = np.vstack([logq, logq[:1]]), np.append(y, 0)
    groups = [f"actor{i % 36}" for i in range(len(y))]
    g, ctx, _ = gmi_context(
        FakeModel(logq, y, k),
        logq,
        y,
        k,
        {},
        groups=groups,
        params={"n_bootstrap": 300, "n_permutations": 100, "text_reference": False},
    )
    rg = attribute_groups(ctx, "emotion")
    rng = np.random.default_rng(0)
    ip_reps = {"adapter": 1.5 + 0.1 * rng.standard_normal(300), "llm.final": 1.2 + 0.1 * rng.standard_normal(300)}
    probe = AnalysisOutput(
        metrics=[
            Metric("i_probe_bits", 1.5, "adapter", "emotion"),
            Metric("i_probe_bits", 1.2, "llm.final", "emotion"),
            Metric("i_probe_bits", 1.0, "llm.3", "emotion"),
        ]
    )
    probe.replicates = {("i_probe_bits", s, "emotion"): v for s, v in ip_reps.items()}
    probe.replicates[("_groups", None, "emotion")] = groups_identity(ctx, rg)
    ctx.previous = {"probe": probe}
    out = g.run(ctx)
    m = {(x.metric, x.stage): x for x in out.metrics}
    gb, lm = m[("gmi_bits", "llm.final")], m[("gmi_lm_bits", "llm.final")]
    assert lm.value > gb.value + 0.05 and lm.n_groups == gb.n_groups == 36
    assert 0 < m[("gmi_p", "llm.final")].value < 0.02  # an informative decoder
    g_reps, lm_reps = (
        out.replicates[("gmi_bits", "llm.final", "emotion")],
        out.replicates[("gmi_lm_bits", "llm.final", "emotion")],
    )
    for stage in ("adapter", "llm.final"):
        a, al = m[("accessibility", stage)], m[("accessibility_lm", stage)]
        assert a.value == pytest.approx(gb.value / (1.5 if stage == "adapter" else 1.2))
        assert (a.ci_low, a.ci_high) == pytest.approx(percentile_ci(g_reps / ip_reps[stage]))
        assert (al.ci_low, al.ci_high) == pytest.approx(percentile_ci(lm_reps / ip_reps[stage]))
    assert ("accessibility", "llm.3") not in m  # science.md §2: the two contexts only
    validate_record(ctx, out, len(y))
    # another run's probe (other draws): the ratio keeps its value and loses its CI, and says so
    probe.replicates[("_groups", None, "emotion")] = {"seed": 1}
    g, ctx, _ = gmi_context(
        FakeModel(logq, y, k),
        logq,
        y,
        k,
        {},
        groups=groups,
        previous={"probe": probe},
        params={"n_bootstrap": 100, "n_permutations": 0, "text_reference": False},
    )
    out = g.run(ctx)
    a = [x for x in out.metrics if x.metric == "accessibility" and x.stage == "adapter"][0]
    assert a.value is not None and a.ci_low is None
    assert any("not this run's" in n for n in out.notes)
    assert not [x for x in out.metrics if x.metric == "gmi_p"]  # n_permutations = 0: no test


def test_unverbalizable_classes_are_left_out_of_gmi_with_the_reason():
    logq, y = channel(3, 0.2, per_class=20)
    model = FakeModel(logq, y, 3)
    g, ctx, loads = gmi_context(model, logq, y, 3, {}, verbalizable=False)
    out = g.run(ctx)
    assert out.metrics == [] and loads == [] and model.calls == []
    assert "not verbalizable" in out.summary["attributes"]["emotion"]["skipped"]
    assert any("left out of GMI" in n for n in out.notes)
