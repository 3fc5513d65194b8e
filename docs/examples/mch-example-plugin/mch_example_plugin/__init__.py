"""An external mch plugin: PaliGemma as a model plugin (see docs/contributing-a-model.md)."""
