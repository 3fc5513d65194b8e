"""The paper protocol's text baselines (llama, vicuna) on tiny Llama-family checkpoints built here."""

from __future__ import annotations

import pytest
import torch

from mch.api import MchError, ModelSpec, Sample
from mch.capture import capture
from mch.plugins.models.text import TextBaseline
from mch.plugins.models.tiny import make_tiny_llama, make_tiny_vicuna
from mch.testing import assert_model_plugin_contract, make_lora_adapter, tiny_samples

LLAMA = ModelSpec(
    name="llama", entry="mch.plugins.models.text:TextBaseline", modality="text", checkpoint="meta-llama/Llama-3.1-8B"
)
VICUNA = ModelSpec(
    name="vicuna", entry="mch.plugins.models.text:TextBaseline", modality="text", checkpoint="lmsys/vicuna-7b-v1.5"
)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_text")
    return {"llama": make_tiny_llama(root / "llama"), "vicuna": make_tiny_vicuna(root / "vicuna")}


@pytest.fixture(scope="module")
def models(ckpts):
    out = {}
    for spec in (LLAMA, VICUNA):
        m = TextBaseline(spec, checkpoint=str(ckpts[spec.name]))
        m.load()
        out[spec.name] = m
    return out


@pytest.mark.parametrize("name", ["llama", "vicuna"])
def test_contract(models, name):
    report = assert_model_plugin_contract(models[name], samples=tiny_samples("text", 3))
    assert report.views == ["text"]
    assert report.stages["text"] == ["adapter", "llm.0", "llm.1", "llm.final"]
    assert set(report.widths["text"].values()) == {64}


@pytest.mark.parametrize("name,bos", [("llama", "<|begin_of_text|>"), ("vicuna", "<s>")])
def test_raw_text_with_bos_and_no_template(models, name, bos):
    m = models[name]
    text = "the speaker sounds happy"
    prep = m.prepare([Sample("a", text, {}, {})], "paper", "text")
    ids = prep.inputs["input_ids"][0].tolist()
    assert ids[0] == m.tokenizer.convert_tokens_to_ids(bos)
    assert ids[1:] == m.tokenizer(text, add_special_tokens=False)["input_ids"]
    masks = prep.pools["llm"].masks
    assert masks["all"][0].all() and not masks["modality"][0, 0] and masks["modality"][0, 1:].all()


def test_truncation_at_512_tokens(models):
    m = models["llama"]
    prep = m.prepare([Sample("long", "the speaker sounds happy " * 300, {}, {})], "paper", "text")
    assert prep.inputs["input_ids"].shape[1] == 512


def test_paper_pooling_equals_the_reference_mean_over_every_position(models):
    m = models["vicuna"]
    texts = ["a cat sits on a red chair", "it is eleven"]
    got = capture(
        m,
        m.prepare([Sample(str(i), t, {}, {}) for i, t in enumerate(texts)], "paper", "text"),
        ["llm.0", "llm.final"],
        "all",
        "text",
    )
    for i, t in enumerate(texts):  # the reference: one text at a time, plain mean incl. BOS
        ids = torch.tensor([m.tokenizer(t)["input_ids"]])
        with torch.inference_mode():
            hs = m.module(input_ids=ids, output_hidden_states=True).hidden_states
        torch.testing.assert_close(got["llm.0"][i], hs[1][0].mean(0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got["llm.final"][i], hs[-1][0].mean(0), atol=1e-5, rtol=1e-5)


def test_only_the_text_view_exists(models):
    m = models["llama"]
    with pytest.raises(MchError, match="text view"):
        m.prepare(tiny_samples("text", 2), "paper", "modal")
    with pytest.raises(MchError, match="text view"):
        m.stage_map("modal")


def test_score_matches_a_manual_forward_pass(models):
    m = models["llama"]
    samples = tiny_samples("text", 2)
    query, conts = "The speaker sounds", ["happy", "very sad"]
    sc = m.score(samples, query, conts, "paper", "text")
    tok = m.tokenizer
    for i, s in enumerate(samples):
        prompt = f"{s.text}\n{query}"
        for k, c in enumerate(conts):
            base = tok(prompt)["input_ids"]
            full = tok(prompt + " " + c)["input_ids"]
            n = len(full) - len(base)
            assert n == sc.n_tokens[k]
            ids = torch.tensor([full])
            with torch.inference_mode():
                lp = torch.log_softmax(m.module(input_ids=ids).logits[0].float(), -1)
            manual = float(lp[torch.arange(len(full) - n - 1, len(full) - 1), ids[0, -n:]].sum())
            assert abs(manual - sc.logp[i, k]) < 1e-4


def test_missing_checkpoint_is_one_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    for spec in (LLAMA, VICUNA):
        with pytest.raises(MchError) as err:
            TextBaseline(spec).load()
        assert spec.checkpoint in str(err.value) and "--checkpoint" in str(err.value)


def test_lora_adapter_merges_and_a_mismatched_one_is_refused(ckpts, models, tmp_path):
    base = models["llama"]
    adapter, expected = make_lora_adapter(base.module.model, tmp_path / "lora", target_modules=("q_proj", "o_proj"))
    tuned = TextBaseline(LLAMA, checkpoint=str(ckpts["llama"]), adapter=str(adapter))
    tuned.load()
    state = tuned.module.model.state_dict()
    for k, w in expected.items():
        torch.testing.assert_close(state[k], w)
    assert tuned.lora_target() == "model"
    # made on the whole causal LM: its keys carry an extra "model." level the decoder does not have
    wrong, _ = make_lora_adapter(base.module, tmp_path / "wrong")
    with pytest.raises(MchError, match="adapter"):
        TextBaseline(LLAMA, checkpoint=str(ckpts["llama"]), adapter=str(wrong)).load()
