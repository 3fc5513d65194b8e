"""The example plugin's own tests: the harness contract on a tiny checkpoint, plus a check
that `score` equals a plain forward pass. Run with `pytest` from this directory."""

import pytest
import torch
from mch_example_plugin.paligemma import PaliGemma
from mch_example_plugin.tiny import make_tiny_paligemma

from mch.api import ModelSpec
from mch.testing import assert_model_plugin_contract, tiny_samples

SPEC = ModelSpec(
    name="paligemma",
    entry="mch_example_plugin.paligemma:PaliGemma",
    modality="vision",
    checkpoint="google/paligemma-3b-pt-224",
)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    torch.set_num_threads(1)  # tiny matrices: extra threads only wait
    p = PaliGemma(SPEC, checkpoint=str(make_tiny_paligemma(tmp_path_factory.mktemp("paligemma"))))
    p.load()
    return p


def test_contract(plugin):
    report = assert_model_plugin_contract(plugin, samples=tiny_samples("vision", 3))
    assert report.widths["modal"] == {"encoder": 32, "adapter": 64, "llm.0": 64, "llm.1": 64, "llm.final": 64}


def test_image_tokens_are_the_modality_span(plugin):
    prep = plugin.prepare(tiny_samples("vision", 2), "default")
    ids = prep.inputs["input_ids"]
    assert torch.equal(prep.pools["llm"].masks["modality"], ids == plugin.config.image_token_id)
    assert prep.pools["llm"].masks["modality"].sum(1).tolist() == [4, 4]


def test_score_matches_a_plain_forward(plugin):
    samples = tiny_samples("vision", 2)
    sc = plugin.score(samples, "the answer is", ["yes", "a red bus"], "default")
    for i, s in enumerate(samples):
        for k, c in enumerate(["yes", "a red bus"]):
            enc = plugin.processor(
                images=[s.media], text=["<image>caption en"], suffix=[f"the answer is {c}"], return_tensors="pt"
            )
            ids, types = enc["input_ids"][:, :-1], enc["token_type_ids"][:, :-1]  # drop the suffix's EOS
            with torch.inference_mode():
                logits = plugin.module(
                    input_ids=ids,
                    pixel_values=enc["pixel_values"],
                    token_type_ids=types,
                    attention_mask=torch.ones_like(ids),
                ).logits[0]
            lp = torch.log_softmax(logits.float(), -1)
            n = int(sc.n_tokens[k])
            pos = torch.arange(ids.shape[1] - n - 1, ids.shape[1] - 1)
            assert abs(float(lp[pos, ids[0, pos + 1]].sum()) - sc.logp[i, k]) < 1e-4
