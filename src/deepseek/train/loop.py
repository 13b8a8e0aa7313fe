"""One training stage: which parameters learn, on what loss, for how many steps; resumable.

Every stage saves its state (weights, optimizer, step, loss history) to `<work>/<stage>.state`
every `save_every` steps and when it ends. A rerun of the recipe skips finished stages and resumes an
interrupted one from its last save, reading the same windows of the token stream in the same order.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from deepseek.model import Transformer
from deepseek.model.moe import MoE

from . import forward as fw


@dataclass(frozen=True)
class Stage:
    """`trains`: "main" (everything but the indexers and MTP), "indexer" (only the indexers of the main
    layers; the model frozen), "all" (main + indexers), "mtp" (only the MTP layer; its embedding and
    head stay copies of the main model's)."""

    name: str
    steps: int
    lr: float
    trains: str
    mode: fw.Mode
    warmup: int = 20
    min_lr_ratio: float = 0.1
    sft: bool = False           # conversations only, loss on the assistant's replies


def trainable(model: Transformer, trains: str) -> list[torch.nn.Parameter]:
    """Select the stage's parameters (requires_grad on them only) and return them."""
    n = model.config.num_hidden_layers
    main_layers = list(model.model.layers[:n])
    indexers = {id(p) for layer in main_layers if layer.self_attn.indexer is not None
                for p in layer.self_attn.indexer.parameters()}
    mtp = {id(p) for layer in model.mtp_layers for p in layer.parameters()}
    mtp_copies = {id(p) for layer in model.mtp_layers
                  for p in (layer.embed_tokens.weight, layer.shared_head.head.weight)}
    biases = {id(m.gate.e_score_correction_bias) for m in model.modules() if isinstance(m, MoE)}
    chosen = []
    for p in model.parameters():
        pid = id(p)
        if pid in biases or pid in mtp_copies:
            want = False                      # the router bias is set by load balancing, not gradients
        elif trains == "mtp":
            want = pid in mtp
        elif trains == "indexer":
            want = pid in indexers
        elif trains in ("main", "all"):
            want = pid not in mtp and (trains == "all" or pid not in indexers)
        else:
            raise ValueError(f"unknown parameter group {trains!r}")
        p.requires_grad_(want)
        if want:
            chosen.append(p)
    return chosen


def lr_at(stage: Stage, step: int) -> float:
    """Linear warm-up, then cosine decay to `min_lr_ratio` of the peak."""
    if step < stage.warmup:
        return stage.lr * (step + 1) / stage.warmup
    progress = (step - stage.warmup) / max(1, stage.steps - stage.warmup)
    return stage.lr * (stage.min_lr_ratio + (1 - stage.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def balance_experts(model: Transformer, loads: list[torch.Tensor], rate: float = 1e-3) -> None:
    """Auxiliary-loss-free balancing (DeepSeek-V3): nudge each expert's routing bias toward the mean load."""
    moes = [m for m in model.modules() if isinstance(m, MoE)]
    for moe, load in zip(moes, loads):
        load = load.float()
        moe.gate.e_score_correction_bias.data += rate * torch.sign(load.mean() - load)


def stage_loss(model: Transformer, stage: Stage, batch) -> tuple[torch.Tensor, dict, list[torch.Tensor]]:
    """The stage's loss on a batch of windows [B, S+1] (or windows and their per-token loss weights),
    the figures to log, and the tokens each expert of each MoE layer received."""
    batch, mask = batch if isinstance(batch, tuple) else (batch, None)
    inputs, targets = batch[:, :-1], batch[:, 1:]
    weights = mask[:, 1:] if mask is not None else None
    aux = fw.Aux()
    if stage.trains == "mtp":
        with torch.no_grad():
            hidden = fw.hidden_states(model, inputs, fw.Mode(sparse=True), fw.Aux())
        logits = fw.mtp_logits(model, hidden, inputs, stage.mode, aux)       # predicts t_{i+2}
        lm = fw.cross_entropy(logits, targets[:, 1:])
    else:
        lm = fw.cross_entropy(fw.logits(model, inputs, stage.mode, aux), targets, weights)
    kl = torch.stack(aux.index_kl).mean() if aux.index_kl else None
    loss = kl if stage.trains == "indexer" else lm + (kl if kl is not None else 0)
    logs = {"lm": lm.item(), **({"index_kl": kl.item()} if kl is not None else {})}
    if aux.concentration:
        outside = torch.stack(aux.concentration).mean()
        loss = loss + stage.mode.concentrate * outside
        logs["topk_mass"] = math.exp(-outside.item())
    if aux.copy_heads:
        copy = fw.copy_head_loss(aux, inputs)
        loss = loss + stage.mode.copy_head_weight * copy
        logs["copy_heads"] = copy.item()
    return loss, logs, aux.expert_load


def optimizer_for(params: list[torch.nn.Parameter], lr: float) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices only: norm gains and biases are not pulled to zero."""
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.95))


def _to(batch, device: torch.device):
    return tuple(t.to(device) for t in batch) if isinstance(batch, tuple) else batch.to(device)


def run_stage(model: Transformer, stage: Stage, batches, work: Path, save_every: int = 50,
              progress: bool = True) -> list[dict]:
    """Train `stage` to its last step, resuming from `<work>/<name>.state` if present. `batches(step)`
    gives the batch of a step (moved to the model's device). Returns the per-step log."""
    from tqdm import tqdm

    work.mkdir(parents=True, exist_ok=True)
    device = model.lm_head.weight.device
    params = trainable(model, stage.trains)
    optimizer = optimizer_for(params, stage.lr)
    state_path = work / f"{stage.name}.state"
    start, log = load_state(state_path, model, optimizer)
    model.train()
    bar = tqdm(range(start, stage.steps), initial=start, total=stage.steps, desc=stage.name, disable=not progress)
    for step in bar:
        began = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(stage, step)
        loss, logs, expert_load = stage_loss(model, stage, _to(batches(step), device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if expert_load and stage.trains != "indexer":      # a frozen model keeps its routing
            balance_experts(model, expert_load)
        log.append({"step": step, **logs, "lr": optimizer.param_groups[0]["lr"],
                    "seconds": round(time.perf_counter() - began, 3)})
        bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items()})
        if (step + 1) % save_every == 0 or step + 1 == stage.steps:
            save_state(state_path, model, optimizer, step + 1, log)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return log


def save_state(path: Path, model: Transformer, optimizer: torch.optim.Optimizer, step: int,
               log: list[dict]) -> None:
    """Weights and AdamW moments as safetensors (no pickle), step and log as JSON; written atomically."""
    from safetensors.torch import save_file

    # Cloned: tied parameters appear under two names, and safetensors refuses shared storage.
    tensors = {f"model.{k}": v.detach().cpu().clone() for k, v in model.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value):
                    tensors[f"optim.{names[id(p)]}.{key}"] = value.detach().cpu().contiguous()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"step": str(step), "log": json.dumps(log)})
    tmp.replace(path)


def load_state(path: Path, model: Transformer,
               optimizer: torch.optim.Optimizer | None = None) -> tuple[int, list[dict]]:
    """Restore a saved stage (weights, and the optimizer's moments when one is given); (0, []) when
    there is none."""
    from safetensors import safe_open

    if not path.exists():
        return 0, []
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys() if optimizer is not None or k.startswith("model.")}
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    names = {n: p for n, p in model.named_parameters()}
    for key, value in tensors.items():
        if key.startswith("optim."):
            name, _, slot = key[len("optim."):].rpartition(".")
            # AdamW keeps its step count on the CPU; the moments live with their parameter.
            optimizer.state[names[name]][slot] = value if slot == "step" else value.to(names[name].device)
    return int(meta["step"]), json.loads(meta["log"])


def is_finished(work: Path, stage: Stage) -> bool:
    from safetensors import safe_open

    path = work / f"{stage.name}.state"
    if not path.exists():
        return False
    with safe_open(str(path), framework="pt") as f:
        return int(f.metadata()["step"]) >= stage.steps


def plot_losses(log: list[dict], path: Path, title: str) -> Path | None:
    """A PNG of the stage's losses per step (skipped when matplotlib is not installed)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, color in (("lm", "tab:blue"), ("index_kl", "tab:orange")):
        points = [(r["step"], r[key]) for r in log if key in r]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, color=color, alpha=0.3, linewidth=0.6)
            ax.plot(steps, _smooth(values), color=color, label=f"{key} (moving mean)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _smooth(values, window: int = 25) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out
