"""Decoder sensitivity (`lipschitz`) and the one-space bound (`bound`): a decoder with a known
Lipschitz constant, the toy organism, and the cache that spares a rerun the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mch.api import AnalysisOutput, AnalysisSpec, Attribute, Metric, ModelSpec, Sample
from mch.context import AnalysisContext
from mch.model import ModelPlugin, Pool, Prepared
from mch.plugins.analyses.bound import Bound
from mch.plugins.analyses.lipschitz import Lipschitz, decoder_gradients, diameter, finite_differences

D = 6


pytestmark = pytest.mark.usefixtures("torch_one_thread", "blas_one_thread")


class LinearDecoder(ModelPlugin):
    """log q = mean over the sample's positions of w·z_t, z = adapter(frames): the gradient is
    w/T at each of the T positions, so ‖∂ log q/∂z‖ = ‖w‖/√T and the pooled gradient is w."""

    def __init__(self, w: np.ndarray):
        super().__init__(ModelSpec(name="linear", entry="tests:LinearDecoder", modality="speech", checkpoint="none"))
        self.module = nn.Module()
        self.module.adapter = nn.Linear(3, D)
        torch.manual_seed(0)
        nn.init.normal_(self.module.adapter.weight)
        self.w = torch.tensor(w, dtype=torch.float32)

    def load(self):  # the module is built in __init__
        pass

    def stage_map(self, view="modal"):
        return {"adapter": "adapter"}

    def score(self, samples, query, continuations, protocol, view="modal"):
        raise NotImplementedError("a test double for the decoder loss: it scores no continuation")

    def _frames(self, samples):
        T = max(len(s.media) for s in samples)
        x = torch.zeros(len(samples), T, 3)
        mask = torch.zeros(len(samples), T, dtype=torch.bool)
        for i, s in enumerate(samples):
            x[i, : len(s.media)] = torch.as_tensor(s.media)
            mask[i, : len(s.media)] = True
        return x, mask

    def prepare(self, samples, protocol, view="modal"):
        x, mask = self._frames(samples)
        return Prepared(
            inputs={"x": x},
            pools={"adapter": Pool(torch.arange(len(samples)), {"modality": mask, "all": mask})},
            n=len(samples),
        )

    def loss(self, samples, protocol, grad=False):
        x, mask = self._frames(samples)
        with torch.enable_grad() if grad else torch.inference_mode():
            z = self.module.adapter(x)
            logq = ((z @ self.w) * mask).sum(1) / mask.sum(1)
            return -logq


def samples_of(lengths, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i, T in enumerate(lengths):
        frames = rng.normal(size=(T, 3)).astype(np.float32)
        out.append(Sample(sample_id=f"s{i}", text="", labels={"y": "a"}, groups={"g": "g"}, loader=lambda f=frames: f))
    return out


def test_gradient_norms_of_a_linear_decoder_match_its_constant():
    w = np.array([3.0, -1.0, 0.5, 2.0, 0.0, 1.0])
    model = LinearDecoder(w)
    lengths = [4, 9, 1, 16]
    r = decoder_gradients(model, samples_of(lengths), "default", "modality")
    T = np.array(lengths, float)
    np.testing.assert_allclose(r["T"], T)
    np.testing.assert_allclose(r["L_pooled"], np.linalg.norm(w), rtol=1e-5)
    np.testing.assert_allclose(r["L_seq"], np.linalg.norm(w) / np.sqrt(T), rtol=1e-5)
    np.testing.assert_allclose(r["grad_pooled"], np.tile(w, (4, 1)), rtol=1e-5, atol=1e-6)
    fd = finite_differences(model, samples_of(lengths), "default", "modality", 1e-2)
    np.testing.assert_allclose(fd[:, 1], fd[:, 0], rtol=1e-3)  # central differences along the gradient
    np.testing.assert_allclose(fd[:, 3], fd[:, 2], rtol=1e-3)


def _context(model, samples, protocol="default", analysis=None, **params):
    X = np.stack([np.asarray(model.module.adapter(torch.as_tensor(s.media)).mean(0).detach()) for s in samples])
    rng = np.random.default_rng(1)
    Y = (X + rng.normal(size=X.shape)).astype(np.float32)
    attr = {"y": Attribute("y", ["a"], {"a": ["a"]}, "q", group_key="g")}
    ctx = AnalysisContext(
        protocol=protocol,
        params={**analysis.default_params(protocol), **params},
        seed=0,
        stages=["adapter"],
        reps={"adapter": X.astype(np.float32)},
        samples=samples,
        attributes=attr,
        labels={"y": np.array(["a"] * len(samples), dtype=object)},
        groups={"y": np.array(["g"] * len(samples), dtype=object)},
        _model_loader=lambda: model,
        _text_reps=lambda: {"adapter": Y},
    )
    return ctx, X.astype(np.float64), Y.astype(np.float64)


def test_lipschitz_analysis_and_bound_on_a_linear_decoder():
    w = np.array([1.0, 2.0, -2.0, 0.5, 0.0, 1.0])
    model = LinearDecoder(w)
    samples = samples_of(np.random.default_rng(3).integers(2, 12, 30))
    lip = Lipschitz(AnalysisSpec(name="lipschitz", entry="x:y"))
    ctx, _, _ = _context(model, samples, analysis=lip, n_samples=20, n_fd=4, n_boot=100)
    out = lip.run(ctx)
    m = {x.metric: x for x in out.metrics}
    assert m["L_pooled_max"].value == pytest.approx(np.linalg.norm(w), rel=1e-5)
    assert m["L_pooled_median"].value == pytest.approx(np.linalg.norm(w), rel=1e-5)
    assert m["fd_rel_error_seq_max"].value < 1e-2
    bound = Bound(AnalysisSpec(name="bound", entry="x:y"))
    ctx, X, Y = _context(model, samples, analysis=bound, n_samples=30, n_boot=100)
    ctx.previous["lipschitz"] = out
    ctx.previous["distances"] = AnalysisOutput(metrics=[Metric("W1", 1.0, stage="adapter")])
    got = {x.metric: x for x in bound.run(ctx).metrics}
    # log q_i(v) = w·v, so the gap is exactly w·mean(z̄_M − z̄_T) and L = ‖w‖
    assert got["logscore_gap"].value == pytest.approx(float(w @ (X - Y).mean(0)), rel=1e-4, abs=1e-5)
    assert got["L_max"].value == pytest.approx(np.linalg.norm(w), rel=1e-5)
    assert got["path_integral_rel_error"].value < 1e-3
    assert got["bound_held_W1"].value == 1.0 and got["bound_held_paired"].value == 1.0
    assert got["L_W1_previous"].value == pytest.approx(np.linalg.norm(w), rel=1e-5)
    assert got["tightness"].value == pytest.approx(abs(got["logscore_gap"].value) / got["L_W1"].value, rel=1e-9)
    assert got["w1_excess"].value == pytest.approx(got["W1"].value - got["w1_null_mean"].value, rel=1e-9)


def test_w1_floor_of_one_law_and_of_two():
    """W1 between two finite samples of one law is far from 0 (its finite-sample floor); the
    swap null measures that floor, so the excess of one law is ~0 and not significant, while a
    shifted law's excess is about the shift."""
    from mch.plugins.analyses.bound import exact_w1, w1_null

    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(80, 6)), rng.normal(size=(80, 6))
    same = w1_null(X, Y, 40, seed=0)
    w = exact_w1(X, Y)
    assert w > 1.0  # the floor: far from 0 with 80 rows in 6 dims
    assert abs(w - same["mean"]) < 0.15 * w and same["p"] > 0.05
    shifted = w1_null(X, Y + np.array([2.0, 0, 0, 0, 0, 0]), 40, seed=0)
    w2 = exact_w1(X, Y + np.array([2.0, 0, 0, 0, 0, 0]))
    assert shifted["p"] < 0.05 and w2 - shifted["mean"] > 0.5


def test_diameter_follows_the_reference():
    X = np.random.default_rng(0).normal(size=(700, 8)).astype(np.float32)
    d = diameter(X)
    sub = X[np.random.default_rng(42).choice(700, 500, replace=False)]
    r = np.random.default_rng(123)
    a, b = r.choice(500, 200, replace=True), r.choice(500, 200, replace=True)
    assert d["D_std"] == pytest.approx(float(np.std(sub)) * np.sqrt(8))
    assert d["D_diameter"] == max(d["D_std"], float(np.linalg.norm(sub[a] - sub[b], axis=1).max()))


# --------------------------------------------------------------------------- the toy organism


def test_toy_sensitivity_bound_and_cache(tmp_path):
    from mch.runner import RunConfig, run_bench

    params = {
        "lipschitz": {"n_samples": 24, "n_fd": 4, "n_boot": 200},
        "distances": {
            "max_n": 60,
            "n_perm": 20,
            "n_boot": 20,
            "w1_max_n": 40,
            "w1_n_perm": 5,
            "w1_n_boot": 5,
            "n_directions": 16,
            "stages": "adapter",
        },
        "bound": {"n_samples": 24, "path_points": 3, "n_boot": 200},
    }

    def bench():
        _, written = run_bench(
            RunConfig(
                model="toy",
                analyses=["lipschitz", "distances", "bound"],
                limit=60,
                store=tmp_path / "s",
                out_dir=tmp_path / "r",
                params=params,
            )
        )
        return {rec["analysis"]["name"]: rec for _, rec in written}

    first = bench()
    lip = {m["metric"]: m for m in first["lipschitz"]["metrics"]}
    assert lip["fd_rel_error_seq_max"]["value"] < 0.05
    assert lip["fd_rel_error_pooled_max"]["value"] < 0.1
    assert 0 < lip["L_seq_norm_median"]["value"] < lip["L_seq_median"]["value"]
    assert lip["L_seq_mean"]["ci_low"] <= lip["L_seq_mean"]["value"] <= lip["L_seq_mean"]["ci_high"]
    b = {m["metric"]: m for m in first["bound"]["metrics"]}
    assert b["logscore_gap"]["ci_low"] <= b["logscore_gap"]["value"] <= b["logscore_gap"]["ci_high"]
    # default protocol: the CIs resample the run's groups (the toy's key is the sample: 24 rows, 24 groups)
    assert b["logscore_gap"]["n_groups"] == 24 and b["L_p95"]["n_groups"] == 24
    assert b["W1"]["value"] <= b["paired_distance"]["value"] + 1e-9
    assert b["bound_held_W1"]["value"] == 1.0 and b["bound_held_paired"]["value"] == 1.0
    assert b["path_integral_rel_error"]["value"] < 0.3
    assert first["bound"]["extraction"]["model_loaded"] is True
    second = bench()  # everything cached: the model is never loaded, the numbers are the same
    assert second["bound"]["extraction"]["model_loaded"] is False
    assert second["lipschitz"]["metrics"] == first["lipschitz"]["metrics"]
    assert second["bound"]["metrics"] == first["bound"]["metrics"]


def test_toy_paper_protocol_fields(tmp_path):
    from mch.runner import RunConfig, run_bench

    _, written = run_bench(
        RunConfig(
            model="toy",
            analyses=["lipschitz"],
            limit=30,
            protocol="paper",
            store=tmp_path / "s",
            out_dir=tmp_path / "r",
            params={"lipschitz": {"n_samples": 12, "n_fd": 2}},
        )
    )
    s = written[0][1]["summary"]
    for k in (
        "n_requested",
        "n_computed",
        "n_valid",
        "L_log_mean",
        "L_log_std",
        "L_log_median",
        "L_log_p5",
        "L_log_p25",
        "L_log_p75",
        "L_log_p95",
        "L_log_p99",
        "L_log_min",
        "L_log_max",
        "D_diameter",
        "L_D_product_95",
        "L_D_product_99",
        "elapsed_seconds",
        "checks",
    ):
        assert k in s, k
    assert s["n_computed"] == 12 and s["L_D_product_95"] == pytest.approx(s["L_log_p95"] * s["D_diameter"])
    assert {"all_finite", "variation_ok", "L_D_in_range"} <= set(s["checks"])


# --------------------------------------------------------------------------- tiny paper architectures


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    import wave

    from mch.plugins.attributes import synth
    from mch.plugins.models import tiny

    root = tmp_path_factory.mktemp("tiny_mine")
    ck = {
        "llava": tiny.make_tiny_llava(root / "llava"),
        "prismatic_dinov2": tiny.make_tiny_prismatic_dinov2(root / "dinov2"),
        "qwen2audio": tiny.make_tiny_qwen2audio(root / "qwen2audio"),
        "ultravox": tiny.make_tiny_ultravox(root / "ultravox"),
        "llama": tiny.make_tiny_llama(root / "llama"),
    }  # the paper protocol's text-only model
    coco = synth.make("coco", root / "coco", images=40)
    crema = synth.make("cremad", root / "crema", actors=4, sentences=2, engine="numpy")
    wav = sorted((crema / "AudioWAV").glob("*.wav"))[0]  # > 30 s: two Ultravox chunks for one sample
    with wave.open(str(wav)) as w:
        params, frames = w.getparams(), w.readframes(w.getnframes())
    with wave.open(str(wav), "wb") as w:
        w.setparams(params)
        w.writeframes(frames * int(np.ceil(31 * params.framerate / params.nframes)))
    return {"ck": ck, "coco": coco, "crema": crema}


@pytest.mark.slow
@pytest.mark.parametrize(
    "model,protocol",
    [
        ("llava", "default"),
        ("prismatic_dinov2", "default"),
        ("qwen2audio", "default"),
        ("ultravox", "default"),
        ("ultravox", "paper"),
        ("llava", "paper"),
    ],
)
def test_my_analyses_on_tiny_paper_architectures(tiny_world, model, protocol, tmp_path):
    """modes, per_type, distances, lipschitz and bound run on every model layout (patch tokens,
    30 s padded audio, multi-chunk audio) and write valid records; under paper the first
    samples include the two-chunk clip, so the gradient rows are mapped to their sample."""
    from mch.runner import RunConfig, run_bench

    speech = model in ("qwen2audio", "ultravox")
    analyses = ["modes", "per_type", "distances", "lipschitz", "bound"]
    if protocol == "paper":
        params = {
            "distances": {"n_bootstrap": 3},
            "lipschitz": {"n_samples": 4, "n_fd": 2},
            "bound": {"n_samples": 4, "path_points": 3, "n_boot": 50},
        }
    else:
        params = {
            "modes": {"n_boot": 20},
            "per_type": {"n_boot": 20, "w1_reps": 2},
            "distances": {"n_perm": 10, "n_boot": 10, "w1_n_perm": 3, "w1_n_boot": 3, "n_directions": 8},
            "lipschitz": {"n_samples": 6, "batch_size": 3, "n_fd": 2, "n_boot": 50},
            "bound": {"n_samples": 6, "batch_size": 3, "path_points": 3, "n_boot": 50},
        }
    _, written = run_bench(
        RunConfig(
            model=model,
            checkpoint=str(tiny_world["ck"][model]),
            dataset="cremad" if speech else "coco",
            data_path=str(tiny_world["crema" if speech else "coco"]),
            analyses=analyses,
            limit=40,
            batch_size=4,
            protocol=protocol,
            params=params,
            out_dir=tmp_path / "r",
            store=tmp_path / "s",
            text_checkpoint=str(tiny_world["ck"]["llama"]),
        )
    )
    recs = {rec["analysis"]["name"]: rec for _, rec in written}
    assert list(recs) == analyses
    if protocol == "paper":  # modes and distances read the text-only model; bound, this model's own view
        assert recs["modes"]["extraction"]["text_model"]["name"] == "llama"
        assert any("llama" in n for n in recs["modes"]["notes"])
    lip = {m["metric"]: m["value"] for m in recs["lipschitz"]["metrics"]}
    key = "L_log_max" if protocol == "paper" else "L_seq_max"
    assert np.isfinite(lip[key]) and lip[key] > 0
    assert lip["fd_rel_error_seq_median"] < 0.1
    b = {m["metric"]: m["value"] for m in recs["bound"]["metrics"]}
    assert b["bound_held_paired"] == 1.0
