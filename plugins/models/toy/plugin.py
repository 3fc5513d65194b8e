"""`ToyModel`: the toy organism and the validation bench's organisms as a model plugin."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mch.api import MchError, Sample
from mch.model import LossTerms, ModelPlugin, Pool, Prepared, ScoreParts, Scores
from mch.scoring import left_pad, score_shared_prefix

from .._hf_common import decoder_stage_paths, token_pool
from .modeling import EXTRACT_PROMPT, WEIGHTS_ROOT, ToyMLLM, WordTokenizer, pad_frames, pad_targets


class ToyModel(ModelPlugin):
    modality = "speech"
    option_specs: dict = {}  # takes none
    datasets = ("toy",)  # it reads the toy world's frames, nothing else

    def _weights_dir(self) -> Path:
        ck = str(self.checkpoint)
        return WEIGHTS_ROOT / ck.split(":", 1)[1] if ck.startswith("builtin:") else Path(ck)

    @staticmethod
    def _base_dir(path: Path) -> Path:
        """An organism's base (encoder and decoder) weights: the toy's, shipped or beside it."""
        base = json.loads((path / "organism.json").read_text()).get("base", "toy")
        return (WEIGHTS_ROOT / base) if (WEIGHTS_ROOT / base).is_dir() else (path / base)

    def check_checkpoint(self, path: Any) -> None:
        """A toy checkpoint is a directory with model.safetensors or an organism's organism.json."""
        p = Path(str(path))
        if p.is_dir() and not ((p / "model.safetensors").is_file() or (p / "organism.json").is_file()):
            raise MchError(
                f"model {self.spec.name!r}: --checkpoint {p} is not a toy checkpoint (no model.safetensors or "
                f"organism.json); pass a directory written by `python -m mch.plugins.models.toy train --out DIR` "
                f"(or `organism`)"
            )

    def checkpoint_paths(self) -> list[Path]:
        path = self._weights_dir()  # an organism's own adapter and the base weights it runs on
        return [path, self._base_dir(path)] if (path / "organism.json").exists() else [path]

    def load(self) -> None:
        from safetensors.torch import load_file

        path = self._weights_dir()
        adapter_state = None
        if (path / "organism.json").exists():  # an organism of the validation bench: the toy with its own adapter
            adapter_state = load_file(str(path / "adapter.safetensors"))
            path = self._base_dir(path)
        if not (path / "model.safetensors").exists():
            raise MchError(
                f"model {self.spec.name!r}: no model.safetensors in {path}; pass --checkpoint with a "
                f"directory written by `python -m mch.plugins.models.toy train --out DIR` (or `organism`)"
            )
        cfg = json.loads((path / "config.json").read_text())
        self.tokenizer = WordTokenizer(json.loads((path / "vocab.json").read_text()))
        module = ToyMLLM(cfg)
        module.load_state_dict(load_file(str(path / "model.safetensors")))
        if adapter_state is not None:
            module.adapter.load_state_dict(adapter_state)
        if self.adapter:
            from mch.checkpoints import load_lora_adapter

            module.llm = load_lora_adapter(module.llm, self.adapter, merge=True)
        self.n_layers = cfg["llm"]["num_hidden_layers"]
        self.module = module.to(self.device, self.torch_dtype).eval()
        self.validate_stage_map("modal")
        self.validate_stage_map("text")

    def _layers(self) -> int:
        """The decoder's depth: the loaded model's, before loading its checkpoint's config (so
        the stage names are known without the weights; 4, the toy's, if it cannot be read)."""
        n = getattr(self, "n_layers", None)
        if n is None:
            try:
                path = self._weights_dir()
                if (path / "organism.json").exists():
                    path = self._base_dir(path)
                n = int(json.loads((path / "config.json").read_text())["llm"]["num_hidden_layers"])
            except (OSError, ValueError, KeyError, TypeError):
                n = 4
        return n

    def stage_map(self, view: str = "modal", protocol: str = "default") -> dict[str, str]:
        """The same hook points under both protocols."""
        stages = decoder_stage_paths("llm.model", self._layers())
        if view == "text":
            stages["adapter"] = "llm.model.embed_tokens"
        else:
            stages.update(encoder="encoder", adapter="adapter")
        return stages

    # -- inputs
    def _frames(self, samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        arrays = [torch.as_tensor(s.media) for s in samples]
        for s, a in zip(samples, arrays, strict=True):
            if a.dim() != 2 or a.shape[1] != 16:
                raise MchError(
                    f"model 'toy': sample {s.sample_id} has frames of shape {tuple(a.shape)}, "
                    f"expected (T, 16); the toy model reads the `toy` dataset"
                )
        return pad_frames(arrays)

    def prepare(self, samples: Sequence[Sample], protocol: str, view: str = "modal") -> Prepared:
        tok = self.tokenizer
        if view == "text":
            seqs = [[tok.bos_id] + tok.encode(s.text) for s in samples]
            content = [[False] + [True] * (len(q) - 1) for q in seqs]
        else:
            frames, fmask = self._frames(samples)
            prompt = tok.encode(EXTRACT_PROMPT)
            seqs = [[tok.bos_id] + [tok.audio_id] * int(n) + prompt for n in fmask.sum(1)]
            content = [[i == tok.audio_id for i in q] for q in seqs]
        L = max(len(q) for q in seqs)
        B = len(seqs)
        ids = torch.full((B, L), tok.pad_id, dtype=torch.long)
        att = torch.zeros(B, L, dtype=torch.long)
        mod = torch.zeros(B, L, dtype=torch.bool)
        for i, (q, c) in enumerate(zip(seqs, content, strict=True)):
            ids[i, : len(q)] = torch.tensor(q)
            att[i, : len(q)] = 1
            mod[i, : len(q)] = torch.tensor(c)
        real = att.bool()
        owner = torch.arange(B)
        pools = {"llm": token_pool(mod, real)}
        if view == "text":
            pools["adapter"] = pools["llm"]
            inputs = {"input_ids": ids, "attention_mask": att}
        else:
            enc_pool = Pool(owner, {"modality": fmask, "all": fmask})  # batch padding never enters a mean
            pools.update(encoder=enc_pool, adapter=enc_pool)
            inputs = {
                "frames": frames,
                "frame_mask": fmask,
                "input_ids": ids,
                "audio_mask": ids == tok.audio_id,
                "attention_mask": att,
            }
        dev = self.device
        inputs = {k: v.to(dev) for k, v in inputs.items()}
        if "frames" in inputs:
            inputs["frames"] = inputs["frames"].to(self.torch_dtype)
        return Prepared(inputs=inputs, pools=pools, n=B, info={"view": view})

    def forward(self, prepared: Prepared) -> Any:
        assert self.module is not None
        x = prepared.inputs
        if "frames" in x:
            return self.module(**x)
        return self.module.llm.model(input_ids=x["input_ids"], attention_mask=x["attention_mask"])

    def loss_terms(self, samples: Sequence[Sample], protocol: str, grad: bool = False) -> LossTerms:
        """`loss`'s logits and targets: the caption after <bos> <audio>xT "describe this
        sound" (default), or the prompt's own ids (paper); position t predicts token t+1."""
        assert self.module is not None
        tok = self.tokenizer
        frames, fmask = self._frames(samples)
        prompt = tok.encode(EXTRACT_PROMPT)
        seqs, tgt = [], []
        for s, n in zip(samples, fmask.sum(1).tolist(), strict=True):
            pre = [tok.bos_id] + [tok.audio_id] * int(n) + prompt
            if protocol == "paper":  # the reference: the prompt's own ids are the labels
                seqs.append(pre)
                tgt.append(pre)
            else:
                cap = tok.encode(s.text)
                seqs.append(pre + cap)
                tgt.append([-100] * len(pre) + cap)
        ids, labels = pad_targets(seqs, tgt, tok.pad_id)
        att = (ids != tok.pad_id).long()
        ids, labels, att = ids.to(self.device), labels.to(self.device), att.to(self.device)
        ctx = torch.enable_grad() if grad else torch.inference_mode()
        with ctx:
            emb = self.module.embed(
                frames.to(self.device, self.torch_dtype), ids, ids == tok.audio_id, fmask.to(self.device)
            )
            logits = self.module.llm(inputs_embeds=emb, attention_mask=att).logits
            return LossTerms(logits[:, :-1], labels[:, 1:])

    def lora_target(self) -> str:
        return "llm"

    def score_parts(
        self,
        samples: Sequence[Sample],
        query: str,
        continuations: Sequence[str],
        protocol: str,
        view: str = "modal",
        grad: bool = False,
    ) -> ScoreParts:
        assert self.module is not None
        with torch.enable_grad() if grad else torch.no_grad():
            prefixes = self.prompt_embeds(samples, query, view)
        return ScoreParts(self.module.llm, prefixes, [self.tokenizer.encode(c) for c in continuations])

    def prompt_embeds(self, samples: Sequence[Sample], query: str, view: str = "modal") -> list[torch.Tensor]:
        """Per-sample decoder input for a GMI prompt: <bos> + modality (or text) + query."""
        assert self.module is not None
        tok = self.tokenizer
        q = tok.encode(query)
        emb = self.module.llm.model.embed_tokens
        out = []
        if view == "text":
            for s in samples:
                ids = torch.tensor([tok.bos_id] + tok.encode(s.text) + q, device=self.device)
                out.append(emb(ids))
            return out
        frames, fmask = self._frames(samples)
        tokens = self.module.adapter(self.module.encoder(frames.to(self.device, self.torch_dtype)))
        bos = emb(torch.tensor([tok.bos_id], device=self.device))
        qe = emb(torch.tensor(q, device=self.device))
        for i in range(len(samples)):
            out.append(torch.cat([bos, tokens[i, fmask[i]], qe], dim=0))
        return out

    def score(
        self, samples: Sequence[Sample], query: str, continuations: Sequence[str], protocol: str, view: str = "modal"
    ) -> Scores:
        assert self.module is not None
        conts = [self.tokenizer.encode(c) for c in continuations]
        with torch.inference_mode():
            x, m = left_pad(self.prompt_embeds(samples, query, view))
            logp, n = score_shared_prefix(self.module.llm, x, m, conts)
        return Scores(logp=logp.numpy(), n_tokens=n.numpy())
