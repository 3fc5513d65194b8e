"""What mch finds through the `mch` entry-point group: one hook that registers the model.

Registering is cheap: the spec names the plugin class as a string, imported only when used."""

from mch.api import ModelSpec
from mch.hookspecs import hookimpl


@hookimpl
def mch_register_models(register):
    register(
        ModelSpec(
            name="paligemma",
            entry="mch_example_plugin.paligemma:PaliGemma",
            modality="vision",
            checkpoint="google/paligemma-3b-pt-224",
            revision=None,  # pin a commit of the release once you have it locally
            aliases=("paligemma-3b",),
            options={"default_dataset": "coco"},  # what `mch bench --model paligemma` reads without --dataset
            description="PaliGemma-3B (SigLIP So400m -> linear projector -> Gemma-2B), prefix LM; example plugin",
        )
    )
