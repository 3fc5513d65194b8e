"""No model plugin ever asks on stdin whether to run a checkpoint's own Python code, nor runs it,
unless the user passed --trust-remote-code (every `from_pretrained`/`AutoX` call passes the
flag explicitly: with None, transformers prompts "Do you wish to run the custom code? [y/N]")."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest

from mch.api import MchError, load_entry
from mch.manager import get_registry

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _make(kind: str, out: Path) -> tuple[str, Path, Path]:
    """(model name, --checkpoint, the directory whose config.json/tokenizer transformers reads)."""
    from mch.plugins.models import tiny

    if kind == "llava":
        d = tiny.make_tiny_llava(out)
        return "llava", d, d
    if kind == "qwen2audio":
        d = tiny.make_tiny_qwen2audio(out)
        return "qwen2audio", d, d
    if kind == "llama":
        d = tiny.make_tiny_llama(out)
        return "llama", d, d
    if kind == "prismatic":
        d = tiny.make_tiny_prismatic_dinov2(out)
        return "prismatic_dinov2", d, d / "llm"
    d = tiny.make_tiny_ultravox(out, layout="full")
    return "ultravox", d, d


def _with_remote_code(hf_dir: Path, marker: Path) -> None:
    """The config (and tokenizer) name an architecture that exists only as the checkpoint's own
    code, as a Hub `trust_remote_code` release does; importing that code leaves `marker`."""
    (hf_dir / "remote_code.py").write_text(f"open({str(marker)!r}, 'a').write('ran')\n")
    cfg = json.loads((hf_dir / "config.json").read_text())
    if cfg.get("model_type") != "ultravox":  # ultravox is custom code already (not in transformers)
        cfg["model_type"] = "mch_remote_only"
    cfg["auto_map"] = {
        "AutoConfig": "remote_code.Config",
        "AutoModel": "remote_code.Model",
        "AutoModelForCausalLM": "remote_code.Model",
    }
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    tc = hf_dir / "tokenizer_config.json"
    tok = json.loads(tc.read_text())
    tok["auto_map"] = {"AutoTokenizer": ["remote_code.Tokenizer", None]}
    tok["tokenizer_class"] = "RemoteOnlyTokenizer"
    tc.write_text(json.dumps(tok))


@pytest.mark.parametrize("kind", ["llava", "qwen2audio", "llama", "prismatic", "ultravox"])
def test_remote_code_is_never_asked_for_nor_run_without_the_flag(kind, tmp_path, monkeypatch):
    name, ckpt, hf_dir = _make(kind, tmp_path / kind)
    marker = tmp_path / "ran"
    _with_remote_code(hf_dir, marker)
    asked: list = []  # transformers swallows an exception raised from input(): record and answer no
    monkeypatch.setattr(builtins, "input", lambda *a, **_k: asked.append(a) or "n")
    spec = get_registry().get("model", name)

    def plugin(**kw):
        return load_entry(spec.entry)(spec, checkpoint=str(ckpt), **kw)

    if hasattr(plugin(), "_ensure_paths"):  # stage paths read before the weights load
        with pytest.raises(MchError, match="--trust-remote-code"):
            plugin()._ensure_paths()
    with pytest.raises(MchError, match="--trust-remote-code"):
        plugin().load()
    assert asked == [] and not marker.exists()
    # with the flag the checkpoint's code runs (here it is not a model, so loading then fails)
    with pytest.raises(MchError):
        plugin(trust_remote_code=True).load()
    assert asked == [] and marker.exists()
