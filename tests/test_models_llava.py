"""LLaVA-1.5 plugin on a tiny checkpoint in the llava-hf release format (built here, offline)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mch.api import MchError, ModelSpec
from mch.capture import capture
from mch.plugins.models.llava import Llava
from mch.plugins.models.tiny import make_tiny_llava
from mch.testing import assert_model_plugin_contract, make_lora_adapter, tiny_samples

SPEC = ModelSpec(
    name="llava", entry="mch.plugins.models.llava:Llava", modality="vision", checkpoint="llava-hf/llava-1.5-7b-hf"
)
N_PATCHES = 9  # 42 px / patch 14 -> 3 x 3


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    return make_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


@pytest.fixture(scope="module")
def plugin(ckpt):
    p = Llava(SPEC, checkpoint=str(ckpt))
    p.load()
    return p


@pytest.fixture(scope="module")
def samples():
    return tiny_samples("vision", 3)


def test_release_layout_loads_with_pil_image_processor(ckpt, plugin):
    # the release names the torchvision-backed class; without torchvision the PIL one must be used
    assert json.loads((ckpt / "preprocessor_config.json").read_text())["image_processor_type"] == "CLIPImageProcessor"
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001
        assert type(plugin.processor.image_processor).__name__ == "CLIPImageProcessorPil"


def test_contract(plugin, samples):
    report = assert_model_plugin_contract(plugin, samples=samples)
    assert report.widths["modal"]["encoder"] == 32 and report.widths["modal"]["adapter"] == 64
    assert report.stages["modal"] == ["encoder", "adapter", "llm.0", "llm.1", "llm.final"]
    assert report.max_batch_diff <= 1e-5


def test_stage_map_before_load_matches_loaded(ckpt, plugin):
    fresh = Llava(SPEC, checkpoint=str(ckpt))  # config on the meta device, no weights
    for protocol in ("default", "paper"):
        assert fresh.stage_map("modal", protocol) == plugin.stage_map("modal", protocol)
    assert fresh.stage_map("text") == plugin.stage_map("text")
    assert plugin.stage_map("modal", "default")["encoder"].endswith("encoder.layers.1")  # -2 of 3 layers
    assert plugin.stage_map("modal", "paper")["encoder"].endswith("post_layernorm")


def test_paper_and_default_prompts_render_exactly(plugin, samples):
    assert plugin.render_prompt("paper")[0] == "<image>\nDescribe this image."
    assert plugin.render_prompt("default")[0] == "USER: <image>\nDescribe this image. ASSISTANT:"
    tok = plugin.tokenizer
    ids = plugin.prepare(samples[:1], "paper").inputs["input_ids"][0].tolist()
    expected = (
        [tok.bos_token_id]
        + [plugin.image_token_id] * N_PATCHES
        + tok("\nDescribe this image.", add_special_tokens=False)["input_ids"]
    )
    assert ids == expected
    text, span = plugin.render_prompt("default", "text", "a dog")
    assert text == "USER: a dog\nDescribe this image. ASSISTANT:" and text[span[0] : span[1]] == "a dog"


def test_spans_cover_exactly_the_image_tokens(plugin, samples):
    for protocol in ("default", "paper"):
        prep = plugin.prepare(samples, protocol)
        ids = prep.inputs["input_ids"].cpu()
        llm = prep.pools["llm"].masks
        assert torch.equal(llm["modality"], ids == plugin.image_token_id)
        assert llm["modality"].sum(1).tolist() == [N_PATCHES] * len(samples)
        assert torch.equal(llm["all"], prep.inputs["attention_mask"].cpu().bool())
    enc = plugin.prepare(samples, "default").pools["encoder"].masks
    assert enc["modality"].shape == (3, N_PATCHES + 1) and not enc["modality"][:, 0].any()  # CLS dropped
    text = plugin.prepare(samples, "default", "text")
    tok = plugin.tokenizer
    for i, s in enumerate(samples):
        ids = text.inputs["input_ids"][i][text.pools["llm"].masks["modality"][i]].tolist()
        assert tok.decode(ids).strip() == s.text


def test_encoder_stage_is_what_the_projector_receives(plugin, samples):
    seen = {}
    proj = plugin.module.model.multi_modal_projector
    h = proj.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0].detach()))
    try:
        prep = plugin.prepare(samples, "default")
        out = capture(plugin, prep, ["encoder", "adapter"], "modality")
    finally:
        h.remove()
    torch.testing.assert_close(out["encoder"], seen["x"].mean(1), atol=1e-5, rtol=1e-5)
    # paper: the reference's hook, CLIP's pooled CLS after post_layernorm (not the projector input)
    prep = plugin.prepare(samples, "paper")
    out = capture(plugin, prep, ["encoder"], "all")
    with torch.inference_mode():
        pooled = plugin.module.model.vision_tower(prep.inputs["pixel_values"]).pooler_output
    torch.testing.assert_close(out["encoder"], pooled, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out["encoder"], seen["x"].mean(1), atol=1e-3)


def test_stage_map_follows_the_protocol_passed_not_the_last_prepare(plugin, samples):
    # the protocol travels with the batch (prepare records it; capture passes it to stage_map),
    # so preparing another batch in between changes nothing
    paper = plugin.prepare(samples, "paper")
    expected = capture(plugin, paper, ["encoder"], "all")["encoder"]
    plugin.prepare(samples, "default")
    torch.testing.assert_close(capture(plugin, paper, ["encoder"], "all")["encoder"], expected)
    torch.testing.assert_close(capture(plugin, paper, ["encoder"], "all", protocol="paper")["encoder"], expected)


def _manual_logp(plugin, sample, prompt, cont_ids, view):
    """Full sequence through the HF model, log-softmax, gather: the reference for `score`."""
    tok = plugin.tokenizer
    if view == "modal":
        enc = plugin.processor(images=[sample.media.convert("RGB")], text=[prompt], return_tensors="pt")
        ids = torch.cat([enc["input_ids"], torch.tensor([cont_ids])], 1)
        kw = {"pixel_values": enc["pixel_values"]}
    else:
        ids = torch.tensor([tok(prompt)["input_ids"] + cont_ids])
        kw = {}
    with torch.inference_mode():
        logits = plugin.module(input_ids=ids, attention_mask=torch.ones_like(ids), **kw).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    n = len(cont_ids)
    pos = torch.arange(ids.shape[1] - n - 1, ids.shape[1] - 1)
    return float(lp[pos, ids[0, -n:]].sum())


@pytest.mark.parametrize("protocol,view", [("default", "modal"), ("paper", "modal"), ("default", "text")])
def test_score_matches_a_manual_forward_pass(plugin, samples, protocol, view):
    query, conts = "The image shows", ["a dog", "a red bus"]
    sc = plugin.score(samples[:2], query, conts, protocol, view)
    assert sc.logp.shape == (2, 2)
    for i, s in enumerate(samples[:2]):
        prompt = plugin.render_prompt(protocol, view, s.text, query)[0]
        for k, c in enumerate(conts):
            cont_ids = plugin.tokenizer(prompt + " " + c, add_special_tokens=False)["input_ids"][
                len(plugin.tokenizer(prompt, add_special_tokens=False)["input_ids"]) :
            ]
            assert len(cont_ids) == sc.n_tokens[k]
            assert abs(_manual_logp(plugin, s, prompt, cont_ids, view) - sc.logp[i, k]) < 1e-4


def test_loss_terms_align_content_tokens(plugin, samples):
    lt = plugin.loss_terms(samples, "default")
    tok = plugin.tokenizer
    for i, s in enumerate(samples):
        tgt = lt.targets[i][lt.valid[i]].tolist()
        assert tok.decode(tgt).strip() == s.text  # the caption, after "ASSISTANT:"
    paper = plugin.loss_terms(samples, "paper")  # the reference: the prompt's own ids
    ids = plugin.prepare(samples, "paper").inputs["input_ids"]
    assert torch.equal(paper.targets, ids[:, 1:])
    assert np.isfinite(plugin.loss(samples, "default").numpy()).all()


def test_missing_checkpoint_is_one_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(MchError) as err:
        Llava(SPEC).load()
    msg = str(err.value)
    assert "llava-hf/llava-1.5-7b-hf" in msg and "--checkpoint" in msg and "\n" not in msg
    with pytest.raises(MchError, match="does not exist"):
        Llava(SPEC, checkpoint=str(tmp_path / "nowhere")).load()
    (tmp_path / "broken").mkdir()
    with pytest.raises(MchError, match="cannot load"):
        Llava(SPEC, checkpoint=str(tmp_path / "broken")).load()


def test_an_unknown_stage_is_refused_from_the_config_before_the_weights_load(ckpt):
    """`--stage llm.99` on a 2-layer checkpoint: the stage names come from its config (the
    module tree on the meta device), so the run stops before loading, listing the stages."""
    from mch.run_plan import check_stage_names

    p = Llava(SPEC, checkpoint=str(ckpt))
    check_stage_names(p, ["adapter", "llm.final"])
    with pytest.raises(MchError, match=r"model 'llava' has no stage 'llm\.99' \(--stage\); it declares: encoder, "):
        check_stage_names(p, ["adapter", "llm.99"])
    assert p.module is None


def test_lora_adapter_merges_and_a_mismatched_one_is_refused(ckpt, plugin, tmp_path):
    adapter, expected = make_lora_adapter(plugin.module.model.language_model, tmp_path / "lora")
    tuned = Llava(SPEC, checkpoint=str(ckpt), adapter=str(adapter))
    tuned.load()
    state = tuned.module.model.language_model.state_dict()
    for k, w in expected.items():
        torch.testing.assert_close(state[k], w)
        assert not torch.allclose(plugin.module.model.language_model.state_dict()[k], w)
    assert tuned.lora_target() == "model.language_model"
    out = capture(tuned, tuned.prepare(tiny_samples("vision", 2), "default"), tuned.stages(), "modality")
    assert set(out) == set(tuned.stages())
    # made on the whole LLaVA model: its keys do not match the LLM the plugin merges into
    wrong, _ = make_lora_adapter(plugin.module, tmp_path / "wrong")
    with pytest.raises(MchError, match="do not match"):
        Llava(SPEC, checkpoint=str(ckpt), adapter=str(wrong)).load()


def test_end_to_end_through_the_runner_and_cli(ckpt, tmp_path, monkeypatch):
    """`mch extract`/`mch bench` on the tiny checkpoint and the offline COCO-layout corpus."""

    from bench_runs import bench_probe

    from mch.runner import RunConfig, extract, plan

    monkeypatch.setenv("MCH_DATA", str(tmp_path / "data"))
    cfg = RunConfig(
        model="llava",
        checkpoint=str(ckpt),
        dataset="synth-coco",
        limit=6,
        batch_size=4,
        store=tmp_path / "store",
        out_dir=tmp_path / "results",
    )
    p = plan(cfg)
    for view in ("modal", "text"):
        reps, rows = extract(p, view).read()
        assert len(rows) == 6 and set(reps) == set(p.plugin.stages(view))
        assert all(np.isfinite(np.asarray(v)).all() and v.shape[0] == 6 for v in reps.values())
    assert reps["llm.final"].shape == (6, 64)
    assert bench_probe("llava", ckpt, "synth-coco", 6, tmp_path)
