"""The LoRA training loop of `lora` (science.md §6): PEFT LoRA on the module
`model.lora_target()` names (where `--adapter` is applied when loading), everything else
frozen. Objective: forced choice through the model's own GMI prompt (`score_parts`: the
media, then the attribute's query) with the class's canonical verbalizer as the answer;
cross-entropy on the answer tokens only. AdamW, gradient clipping, validation loss after
every epoch and early stopping; the best-validation checkpoint is saved as a PEFT adapter
directory (`<dir>/best`, what `--adapter` loads) and is the one evaluated (the reference
reported its last epoch, B5). `<dir>/last` holds the latest state (adapter, optimizer,
position) every `save_every` steps and at each epoch's end: an interrupted run resumes from
it. The live model is left as it was: the LoRA layers are removed (not merged) after training.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mch.api import MchError, Sample

from ._params import as_list


def train_lora(
    ctx: Any, attr: Any, query: str, split: dict[str, list[Sample]], cfg_key: dict[str, Any], out_dir: Path
) -> dict[str, Any]:
    """Train the LoRA for `attr` on split["train"], validated on split["val"], and return the
    training state (history, best epoch and loss); a finished training of the same
    configuration `cfg_key` in `out_dir` is reused, an interrupted one resumed."""
    done = out_dir / "done.json"
    if done.exists():
        state = json.loads(done.read_text())
        if state.get("config") == cfg_key and (out_dir / "best" / "adapter_model.safetensors").exists():
            return state
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    from mch.model import resolve_module

    p = ctx.params
    model = ctx.model
    lm = resolve_module(model.module, model.lora_target())
    flags = [(q, q.requires_grad) for q in model.module.parameters()]
    answers = [attr.verbalizers[c][0] for c in attr.classes]
    cls = {c: i for i, c in enumerate(attr.classes)}
    peft_cfg = LoraConfig(
        r=int(p["r"]),
        lora_alpha=int(p["alpha"]),
        lora_dropout=float(p["dropout"]),
        target_modules=as_list(p["target_modules"]),
        bias="none",
    )
    for q, _ in flags:
        q.requires_grad_(False)
    torch.manual_seed(ctx.seed)  # LoRA's random init: the same run gives the same adapter
    try:
        pm = get_peft_model(lm, peft_cfg)
    except ValueError as exc:
        for q, f in flags:
            q.requires_grad_(f)
        raise MchError(f"lora: target modules {as_list(p['target_modules'])} not found in the LLM ({exc})") from None
    try:
        return _fit(
            ctx, model, pm, lm, query, answers, cls, attr.name, split, cfg_key, out_dir, set_peft_model_state_dict
        )
    finally:
        pm.unload()  # the LoRA layers out again, without merging: the live model is as before
        lm.eval()
        for q, f in flags:
            q.requires_grad_(f)


def _fit(ctx, model, pm, lm, query, answers, cls, name, split, cfg_key, out_dir, set_state) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    p = ctx.params
    params = [q for q in pm.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(p["lr"]), weight_decay=float(p["weight_decay"]))
    bs, train, val = int(p["batch_size"]), split["train"], split["val"]
    steps_per_epoch = math.ceil(len(train) / bs)
    st: dict[str, Any] = {
        "epoch": 0,
        "step": 0,
        "history": [],
        "best_val_loss": None,
        "best_epoch": None,
        "bad_epochs": 0,
        "config": cfg_key,
    }
    last = out_dir / "last"
    if (last / "trainer_state.json").exists():  # resume
        saved = json.loads((last / "trainer_state.json").read_text())
        if saved.get("config") == cfg_key:
            set_state(pm, load_file(str(last / "adapter_model.safetensors")))
            opt.load_state_dict(torch.load(last / "optimizer.pt", map_location="cpu", weights_only=True))
            st = saved
    dev = next(lm.parameters()).device

    def batch_loss(batch: Sequence[Sample]) -> Any:
        from mch.scoring import continuation_logits

        parts = model.score_parts(batch, query, answers, ctx.protocol, "modal")
        conts = [parts.continuations[cls[s.labels[name]]] for s in batch]
        logits, targets = continuation_logits(parts.lm, parts.prefixes, conts, parts.positions)
        return torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten().to(dev), ignore_index=-100, reduction="sum"
        ), int((targets != -100).sum())

    def evaluate() -> dict[str, Any]:
        """Validation loss and forced-choice accuracy (argmax over the classes' answers)."""
        lm.eval()
        tot, n = 0.0, 0
        per = {c: {"correct": 0, "total": 0} for c in cls}
        with torch.no_grad():
            for i in range(0, len(val), bs):
                b = val[i : i + bs]
                loss, k = batch_loss(b)
                tot, n = tot + float(loss), n + k
                pred = np.asarray(model.score(b, query, answers, ctx.protocol, "modal").logp).argmax(1)
                for pr, s in zip(pred, b, strict=True):
                    c = s.labels[name]
                    per[c]["total"] += 1
                    per[c]["correct"] += int(int(pr) == cls[c])
        correct = sum(v["correct"] for v in per.values())
        return {"val_loss": tot / max(n, 1), "val_accuracy": correct / max(len(val), 1), "per_class": per}

    def save(dir_: Path, with_opt: bool) -> None:
        tmp = dir_.with_name(dir_.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        pm.save_pretrained(str(tmp), save_embedding_layers=False)  # "auto" looks the base model up online
        if with_opt:
            torch.save(opt.state_dict(), tmp / "optimizer.pt")
            (tmp / "trainer_state.json").write_text(json.dumps(st, indent=1))
        if dir_.exists():
            import shutil

            shutil.rmtree(dir_)
        tmp.rename(dir_)

    if st["epoch"] == 0 and st["step"] == 0 and not st["history"]:
        # before any step: the base model's numbers
        st["history"].append({"epoch": 0, "train_loss": None, **evaluate()})
    while st["epoch"] < int(p["max_epochs"]) and st["bad_epochs"] < int(p["patience"]):
        epoch = st["epoch"]
        order = np.random.default_rng(ctx.seed * 1000 + epoch).permutation(len(train))
        lm.train()
        run_loss, run_n = st.get("run_loss", 0.0), st.get("run_n", 0)
        with ctx.progress.task(f"lora {name} epoch {epoch + 1}/{p['max_epochs']}", steps_per_epoch) as advance:
            advance(st["step"])
            while st["step"] < steps_per_epoch:
                idx = order[st["step"] * bs : (st["step"] + 1) * bs]
                loss, k = batch_loss([train[i] for i in idx])
                opt.zero_grad(set_to_none=True)
                (loss / max(k, 1)).backward()
                torch.nn.utils.clip_grad_norm_(params, float(p["max_grad_norm"]))
                opt.step()
                run_loss, run_n = run_loss + loss.item(), run_n + k
                st["step"] += 1
                st["run_loss"], st["run_n"] = run_loss, run_n
                advance(1)
                if int(p["save_every"]) and st["step"] % int(p["save_every"]) == 0:
                    save(last, True)
        ev = evaluate()
        v_loss = ev["val_loss"]
        st["history"].append({"epoch": epoch + 1, "train_loss": run_loss / max(run_n, 1), **ev})
        if st["best_val_loss"] is None or v_loss < st["best_val_loss"]:
            st.update(best_val_loss=v_loss, best_epoch=epoch + 1, bad_epochs=0)
            save(out_dir / "best", False)
        else:
            st["bad_epochs"] += 1
        st.update(epoch=epoch + 1, step=0, run_loss=0.0, run_n=0)
        save(last, True)
    st["n_train"], st["n_val"] = len(train), len(val)
    (out_dir / "done.json").write_text(json.dumps(st, indent=1))
    return st
