"""The generic transformers plugin, family by family, on tiny checkpoints in each release's
on-disk layout (built here, offline): the contract kit; captured and stored vectors against
the model's own forward with output_hidden_states (batch 1, no padding, pooled over the
modality positions); scores against one full forward of prompt + continuation; a bench."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mch.api import MchError, ModelSpec, Sample
from mch.capture import capture
from mch.plugins.models.hf_families import FAMILIES, family_for
from mch.plugins.models.hf_generic import HFModel
from mch.plugins.models.tiny_hf import BUILDERS, make_tiny_hf
from mch.testing import assert_model_plugin_contract, tiny_samples

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _usable(family) -> bool:
    import importlib.util

    from mch.plugins.models.hf_generic import _torchvision_usable

    return all(
        _torchvision_usable() if mod == "torchvision" else importlib.util.find_spec(mod) is not None
        for mod in family.requires
    )


TESTED = [f.name for f in FAMILIES if f.name in BUILDERS and _usable(f)]
UNUSABLE_HERE = [f.name for f in FAMILIES if f.name in BUILDERS and not _usable(f)]
REGISTRY_NAME = {
    "mistral3": "mistral3",
    "qwen2_vl": "qwen2-vl",
    "qwen2_5_vl": "qwen2.5-vl",
    "qwen3_vl": "qwen3-vl",
    "glm4v": "glm-4.1v",
    "llava_next": "llava-next",
    "llava_onevision": "llava-onevision",
    "aya_vision": "aya-vision",
    "internvl": "internvl3",
    "gemma3": "gemma-3",
    "idefics3": "idefics3",
    "smolvlm": "smolvlm",
    "qwen2_5_omni": "qwen2.5-omni",
}


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Tiny checkpoints, each built on first use and shared by every test of the session."""
    built: dict[str, object] = {}

    def get(family: str):
        if family not in built:
            built[family] = make_tiny_hf(family, tmp_path_factory.mktemp(f"tiny_{family}"))
        return built[family]

    return get


_loaded: dict[str, HFModel] = {}


def plugin_for(family: str, checkpoints) -> HFModel:
    if family not in _loaded:
        fam = next(f for f in FAMILIES if f.name == family)
        spec = ModelSpec(
            name=REGISTRY_NAME[family],
            entry="mch.plugins.models.hf_generic:HFModel",
            modality=fam.modality,
            checkpoint="tiny",
        )
        m = HFModel(spec, checkpoint=str(checkpoints(family)))
        m.load()
        _loaded[family] = m
    return _loaded[family]


def samples_for(modality: str) -> list[Sample]:
    """Three samples whose media differ in size (so token and tile counts differ)."""
    if modality == "speech":
        return tiny_samples("speech", 3)
    from PIL import Image

    rng = np.random.default_rng(1)
    out = []
    for i, (h, w) in enumerate([(30, 96), (70, 70), (110, 40)]):
        img = Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8), "RGB")
        out.append(
            Sample(
                sample_id=f"img{i}",
                text=["a dog on the grass", "a red bus near a building", "two people ride bikes"][i],
                labels={"emotion": "happy"},
                groups={"speaker": f"g{i}"},
                _media=img,
            )
        )
    return out


# --------------------------------------------------------------------------- the reference


def _media_kwargs(m: HFModel, s: Sample) -> dict:
    media = m._media(s)
    kw = {m.family.media_arg: [[media]] if m.family.media_nested else [media]}
    if m.family.modality == "speech":
        kw["sampling_rate"] = m.sampling_rate
    return kw


def reference(m: HFModel, samples, view: str) -> dict[str, torch.Tensor]:
    """Each sample alone through the HF model (no padding) with output_hidden_states: llm.i and
    llm.final pooled over the modality positions, the decoder input there (hidden_states[0]),
    and the adapter's own input/output rows (raw torch hooks, not mch's) averaged."""
    tcfg = m.module.config.get_text_config()
    old = getattr(tcfg, "tie_last_hidden_states", None)
    tcfg.tie_last_hidden_states = False  # hidden_states[L]: the last block's own output, not the final norm's
    rows: dict[str, list[torch.Tensor]] = {}
    try:
        for s in samples:
            if view == "modal":
                enc = dict(
                    m.processor(
                        text=[m.render_prompt("default", "modal")[0]], return_tensors="pt", **_media_kwargs(m, s)
                    )
                )
                where = enc["input_ids"][0] == m.token_id
            else:
                prompt, (a, b) = m.render_prompt("default", "text", s.text)
                e = m.tokenizer(prompt, return_offsets_mapping=True)
                enc = {"input_ids": torch.tensor([e["input_ids"]])}
                where = torch.tensor([end > a and start < b and end > start for start, end in e["offset_mapping"]])
            grabbed: dict[str, torch.Tensor] = {}
            handles = []
            if view == "modal":
                enc_path, adp_path = m._paths["encoder"], m._paths["adapter"]
                first = lambda x: x[0] if isinstance(x, tuple) else x  # noqa: E731 - a one-line hook helper
                if enc_path.endswith(":input"):
                    handles.append(
                        m.module.get_submodule(enc_path[: -len(":input")]).register_forward_pre_hook(
                            lambda _m, a: grabbed.__setitem__("encoder", a[0])
                        )
                    )
                else:
                    handles.append(
                        m.module.get_submodule(enc_path).register_forward_hook(
                            lambda _m, a, o: grabbed.__setitem__("encoder", first(o))
                        )
                    )
                handles.append(
                    m.module.get_submodule(adp_path).register_forward_hook(
                        lambda _m, a, o: grabbed.__setitem__("adapter_rows", first(o))
                    )
                )
            try:
                with torch.inference_mode():
                    out = m.inner()(**enc, output_hidden_states=True, use_cache=False)
            finally:
                for h in handles:
                    h.remove()
            hs = out.hidden_states
            assert len(hs) == m.n_layers + 1
            v = {f"llm.{i}": hs[i + 1][0][where].float().mean(0) for i in range(m.n_layers)}
            v["llm.final"] = out.last_hidden_state[0][where].float().mean(0)
            v["decoder_input"] = hs[0][0][where].float().mean(0)
            for k, x in grabbed.items():
                v[k] = x.reshape(-1, x.shape[-1]).float().mean(0)
            for k, x in v.items():
                rows.setdefault(k, []).append(x)
    finally:
        tcfg.tie_last_hidden_states = old
    return {k: torch.stack(x) for k, x in rows.items()}


def compare(m: HFModel, got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], view: str, atol: float = 2e-5):
    expected = {s: ref[s] for s in m.stages(view) if s in ref}
    expected["adapter"] = ref["decoder_input"] if view == "text" else ref["adapter_rows"]
    if view == "modal":
        expected["encoder"] = ref["encoder"]
        if m.family.rows == "tokens":  # the projector's rows are exactly what fills the modality positions
            torch.testing.assert_close(ref["adapter_rows"], ref["decoder_input"], atol=atol, rtol=1e-4)
    assert set(expected) == set(m.stages(view))
    for s, want in expected.items():
        torch.testing.assert_close(
            torch.as_tensor(got[s]).float(),
            want,
            atol=atol,
            rtol=1e-4,
            msg=lambda msg, s=s: f"{m.family.name} view {view} stage {s}: {msg}",
        )


def manual_logp(m: HFModel, s: Sample, query: str, cont: str, view: str) -> float:
    """log p(cont | prompt + query): one forward of the whole sequence, batch 1, every position
    (M-RoPE's included) computed by the model itself."""
    tok = m.tokenizer
    ctx = m.render_prompt("default", "modal", query=query)[0]
    base = tok(ctx, add_special_tokens=False)["input_ids"]
    full = tok(ctx + " " + cont, add_special_tokens=False)["input_ids"]
    k = next((i for i, (a, b) in enumerate(zip(base, full, strict=False)) if a != b), min(len(base), len(full)))
    cids = full[k:]
    prompt = m.render_prompt("default", view, s.text, query)[0]
    if view == "modal":
        enc = dict(m.processor(text=[prompt], return_tensors="pt", **_media_kwargs(m, s)))
    else:
        enc = {"input_ids": torch.tensor([tok(prompt)["input_ids"]])}
    n = len(cids)
    ids = torch.cat([enc["input_ids"], torch.tensor([cids])], 1)
    enc["input_ids"], enc["attention_mask"] = ids, torch.ones_like(ids)
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in enc:
            enc[key] = torch.cat([enc[key], torch.zeros(1, n, dtype=enc[key].dtype)], 1)
    with torch.inference_mode():
        logits = m.module(**enc, use_cache=False).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    pos = torch.arange(ids.shape[1] - n - 1, ids.shape[1] - 1)
    return float(lp[pos, ids[0, -n:]].sum())


# --------------------------------------------------------------------------- per family


def test_every_family_with_a_builder_is_tested_registered_and_at_least_ten_work():
    from mch.manager import get_registry

    assert len(TESTED) >= 10
    assert set(BUILDERS) == {f.name for f in FAMILIES} and set(BUILDERS) <= set(REGISTRY_NAME)
    reg = get_registry()
    for family, name in REGISTRY_NAME.items():
        spec = reg.get("model", name)
        assert spec.entry == "mch.plugins.models.hf_generic:HFModel"
        assert spec.modality == next(f.modality for f in FAMILIES if f.name == family)
        assert spec.options.get("default_dataset") in ("coco", "librispeech")


@pytest.mark.parametrize("family", TESTED)
def test_contract_capture_equals_the_models_own_forward_and_scores(family, checkpoints):
    m = plugin_for(family, checkpoints)
    samples = samples_for(m.modality)
    report = assert_model_plugin_contract(m, samples=samples)
    assert report.stages["modal"][:2] == ["encoder", "adapter"] and report.max_batch_diff <= 1e-5
    for view in ("modal", "text"):
        prep = m.prepare(samples, "default", view)
        if view == "modal":
            counts = prep.info["n_modality_tokens"]
            assert min(counts) >= 1
        got = capture(m, prep, m.stages(view), "modality", view)
        compare(m, got, reference(m, samples, view), view)
        if view == "modal":  # the media reach the LLM: different inputs, different vectors
            assert float(torch.cdist(got["llm.final"], got["llm.final"]).max()) > 1e-4
    query, conts = "The answer is", ["a dog", "a red bus on the grass"]
    for view in ("modal", "text"):
        sc = m.score(samples[:2], query, conts, "default", view)
        for i, s in enumerate(samples[:2]):
            for k, c in enumerate(conts):
                assert abs(manual_logp(m, s, query, c, view) - sc.logp[i, k]) < 2e-4, (family, view, i, c)


@pytest.mark.parametrize("family", TESTED)
def test_bench_stores_the_vectors_of_the_models_own_forward(
    family, checkpoints, tmp_path, monkeypatch, tmp_path_factory
):
    """`mch bench` on the offline corpus; the stored rows (batches of 4, different lengths
    where the family's token counts vary) equal each sample alone through the HF model."""
    from bench_runs import bench_probe

    from mch.runner import RunConfig, extract, plan

    m = plugin_for(family, checkpoints)
    monkeypatch.setenv("MCH_DATA", str(tmp_path_factory.getbasetemp() / "mch-data"))  # corpora generated once
    dataset = "synth-coco" if m.modality == "vision" else "synth-librispeech"
    ckpt = str(checkpoints(family))
    name = REGISTRY_NAME[family]
    assert bench_probe(name, ckpt, dataset, 5, tmp_path, "--batch-size", "4")
    p = plan(
        RunConfig(
            model=name,
            checkpoint=ckpt,
            dataset=dataset,
            limit=5,
            batch_size=4,
            store=tmp_path / "store",
            out_dir=tmp_path / "results",
        )
    )
    for view in ("modal", "text"):
        reps, rows = extract(p, view).read()  # from the store: the bench extracted them
        assert len(rows) == 5
        compare(
            m,
            {s: np.asarray(v, dtype=np.float32).copy() for s, v in reps.items()},
            reference(m, p.samples, view),
            view,
            atol=5e-5,
        )


# --------------------------------------------------------------------------- the table and the errors


@pytest.mark.parametrize("family", UNUSABLE_HERE or ["-"])
def test_a_family_whose_processor_needs_a_missing_package_says_so(family, checkpoints):
    if family == "-":
        pytest.skip("every family's processor dependencies are installed here")
    fam = next(f for f in FAMILIES if f.name == family)
    spec = ModelSpec(
        name=REGISTRY_NAME[family],
        entry="mch.plugins.models.hf_generic:HFModel",
        modality=fam.modality,
        checkpoint="tiny",
    )
    with pytest.raises(MchError, match="pip install") as err:
        HFModel(spec, checkpoint=str(checkpoints(family))).load()  # the builder itself needs none of them
    assert "\n" not in str(err.value)


def test_stage_paths_before_load_match_the_loaded_model(checkpoints):
    for family in ("qwen2_vl", "idefics3"):
        loaded = plugin_for(family, checkpoints)
        fresh = HFModel(loaded.spec, checkpoint=str(checkpoints(family)))  # config on the meta device
        for view in ("modal", "text"):
            assert fresh.stage_map(view) == loaded.stage_map(view)
        assert fresh.lora_target() == loaded.lora_target() == loaded.family.decoder[0]


def test_the_table_is_chosen_by_config_architectures():
    assert family_for(["Qwen2VLForConditionalGeneration"]).name == "qwen2_vl"
    assert family_for(["SomethingElse", "Gemma3ForConditionalGeneration"]).name == "gemma3"
    assert family_for(["LlamaForCausalLM"]) is None and family_for(None) is None
    archs = [a for f in FAMILIES for a in f.architectures]
    assert len(archs) == len(set(archs))


def test_unknown_architecture_and_missing_checkpoint_are_one_sentence(checkpoints, tmp_path):
    import json
    import shutil

    src = checkpoints("qwen2_vl")
    other = tmp_path / "other"
    shutil.copytree(src, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["architectures"] = ["MysteryForConditionalGeneration"]
    (other / "config.json").write_text(json.dumps(cfg))
    spec = ModelSpec(
        name="hf", entry="mch.plugins.models.hf_generic:HFModel", modality="vision", checkpoint="(--checkpoint)"
    )
    with pytest.raises(MchError, match="not in mch's family table") as err:
        HFModel(spec, checkpoint=str(other)).load()
    assert "\n" not in str(err.value) and "hf_families.py" in str(err.value)
    with pytest.raises(MchError, match="needs --checkpoint"):
        HFModel(spec).load()
    with pytest.raises(MchError, match="does not exist"):
        HFModel(spec, checkpoint=str(tmp_path / "nowhere")).load()


def test_video_processor_is_left_out_without_torchvision_and_refuses_video(checkpoints):
    m = plugin_for("qwen2_vl", checkpoints)
    assert (checkpoints("qwen2_vl") / "video_preprocessor_config.json").exists()  # the release ships one
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001
        assert type(m.processor.image_processor).__name__.endswith("Pil")
        with pytest.raises(MchError, match="torchvision"):
            m.processor.video_processor([np.zeros((2, 28, 28, 3), dtype=np.uint8)])


def test_score_parts_carry_mrope_positions_and_are_refused_where_the_decoder_reads_more(checkpoints):
    from mch.scoring import continuation_logits

    m = plugin_for("qwen2_vl", checkpoints)
    samples = samples_for("vision")[:2]
    parts = m.score_parts(samples, "The answer is", ["a dog", "a red bus"], "default")
    assert parts.positions is not None and parts.positions[0].shape[0] == 3  # (t, h, w) axes
    logits, targets = continuation_logits(parts.lm, parts.prefixes, [parts.continuations[0]] * 2, parts.positions)
    lp = torch.log_softmax(logits.float(), -1)
    got = (torch.gather(lp, -1, targets.clamp(min=0)[..., None]).squeeze(-1) * (targets != -100)).sum(1)
    sc = m.score(samples, "The answer is", ["a dog", "a red bus"], "default")
    np.testing.assert_allclose(got.detach().numpy(), sc.logp[:, 0], atol=2e-4)
    with pytest.raises(MchError, match="decoder reads more"):
        plugin_for("gemma3", checkpoints).score_parts(samples, "The answer is", ["a dog"], "default")


def test_loss_terms_score_the_paired_text_after_the_prompt(checkpoints):
    m = plugin_for("qwen2_5_vl", checkpoints)
    samples = samples_for("vision")
    lt = m.loss_terms(samples, "default")
    for i, s in enumerate(samples):
        assert m.tokenizer.decode(lt.targets[i][lt.valid[i]].tolist()).strip() == s.text
    assert np.isfinite(m.loss(samples, "default").numpy()).all()
