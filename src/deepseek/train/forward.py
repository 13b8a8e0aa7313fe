"""The training forward: whole `[B, S]` windows through the model's own modules, differentiable.

Inference walks sequences one by one against a cache; training wants every window of a batch at
once, the main attention's probabilities (the indexer's teacher, spec §8.6), and gradients through
the FP8 round trips. This file is that second path over the *same* parameters. A test pins it to
`Transformer.forward`: equal logits, dense and sparse.

Hidden states run sequence-major, `[S, B, D]`, so the RoPE helpers (which broadcast a leading
position dim) apply unchanged. FP8 round trips use a straight-through estimator: the forward value is
the quantized one, the gradient passes as if it were the identity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from deepseek.model import Transformer
from deepseek.model.block import DecoderLayer
from deepseek.model.fp8 import fake_quantize_activation
from deepseek.model.indexer import Indexer, rotate_activation, topk_positions
from deepseek.model.mla import MLA
from deepseek.model.moe import MoE
from deepseek.model.rope import rope_cos_sin, rotate_half_split, rotate_interleaved


@dataclass(frozen=True)
class Mode:
    """How one training forward runs.

    sparse:  attend only to the indexer's top-k (else dense causal attention).
    index_loss: also compute the indexer's KL to the main attention ("dense": over every visible key,
        the warm-up; "sparse": over the selected set only). The indexer's inputs are detached, so
        that loss trains the indexer alone.
    coverage: measure the share of each head's dense attention mass that the indexer's top-k holds.
    """

    sparse: bool = False
    index_loss: str | None = None
    coverage: bool = False
    index_topk: int | None = None      # overrides the config's (evaluation at another context)
    # (previous-token layer, induction layer): the first head of each is taught its part of a copying
    # circuit (`copy_head_loss`), with this weight. Dense attention only.
    copy_heads: tuple[int, int] | None = None
    copy_head_weight: float = 0.1
    # Sparse stages: weight of `Aux.concentration`, which teaches the main model to keep its dense
    # attention on the keys the indexer selects (what sparse attention drops is then nearly nothing).
    concentrate: float = 0.0

    def __post_init__(self):
        if self.copy_heads is not None and (self.sparse or len(set(self.copy_heads)) != 2):
            raise ValueError(f"copy_heads needs dense attention and two different layers, got {self}")
        if self.concentrate and not self.sparse:
            raise ValueError(f"concentrate needs sparse attention, got {self}")


# `Aux.concentration` reads every 4th query past k: an unbiased estimate at a quarter of the cost
# (every query: 2.2 s more per post-training step on 2 cores).
CONCENTRATION_STRIDE = 4


@dataclass
class Aux:
    """What a training forward reports besides the hidden states."""

    index_kl: list[torch.Tensor] = field(default_factory=list)     # one scalar per layer
    coverage: list[torch.Tensor] = field(default_factory=list)     # per layer: mean mass, queries past k
    expert_load: list[torch.Tensor] = field(default_factory=list)  # per MoE layer: tokens per expert
    # per layer: -log of each head's dense attention mass on the selected keys, mean over heads and
    # (every CONCENTRATION_STRIDE-th of) the queries that see more than k keys (`Mode.concentrate`)
    concentration: list[torch.Tensor] = field(default_factory=list)
    # "previous" / "induction": log-probabilities [B, S, T] of the copy heads (`Mode.copy_heads`)
    copy_heads: dict[str, torch.Tensor] = field(default_factory=dict)


def ste_fp8(x: torch.Tensor, scale_fmt: str) -> torch.Tensor:
    """FP8 round trip in the forward pass, identity in the backward pass."""
    return x + (fake_quantize_activation(x.detach(), scale_fmt) - x.detach())


def index_logits(ix: Indexer, x: torch.Tensor, qr: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor) -> torch.Tensor:
    """I[b, s, t] = Σ_h w[s,h] ReLU(q[s,h]·k[t]) for x [S,B,D], qr [S,B,R] -> [B, S, T] fp32 (no mask)."""
    s_len, b = x.shape[:2]

    def rope_rotate_quantize(t: torch.Tensor) -> torch.Tensor:
        pe = rotate_half_split(t[..., :ix.rope_dim], cos, sin)
        t = torch.cat((pe, t[..., ix.rope_dim:]), dim=-1)
        return ste_fp8(rotate_activation(t), ix.scale_fmt)

    q = rope_rotate_quantize(ix.wq_b(qr).view(s_len, b, ix.n_heads, ix.head_dim)).float()
    k = rope_rotate_quantize(ix.k_norm(ix.wk(x))).float()                      # [T, B, Di]
    w = ix.weights_proj(x.float()) * (ix.n_heads ** -0.5 * ix.head_dim ** -0.5)  # [S, B, Hi]
    logits = torch.einsum("sbhd,tbd->bsht", q, k).relu()
    return torch.einsum("bsht,sbh->bst", logits, w)


def _kl(target: torch.Tensor, logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean over queries of KL(target ‖ softmax(logits)) over the keys in `keep` [.., S, T]."""
    logq = logits.masked_fill(~keep, float("-inf")).log_softmax(-1).masked_fill(~keep, 0.0)
    return (target * (target.clamp_min(1e-30).log() - logq)).sum(-1).mean()


def mla_forward(attn: MLA, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mode: Mode,
                aux: Aux, copy_head: str | None = None) -> torch.Tensor:
    """x: [S, B, D] attn_norm output -> [S, B, D]. Expanded form over the whole causal window.
    `copy_head`: record the first head's log-probabilities in `aux.copy_heads` under that name."""
    s_len, b = x.shape[:2]
    qr = attn.q_a_layernorm(attn.q_a_proj(x))
    q = attn.q_b_proj(qr).view(s_len, b, attn.n_heads, attn.nope_dim + attn.rope_dim)
    q_nope, q_pe = q.split([attn.nope_dim, attn.rope_dim], dim=-1)
    q_pe = rotate_interleaved(q_pe, cos, sin)
    latent, k_pe = attn.kv_a_proj_with_mqa(x).split([attn.kv_rank, attn.rope_dim], dim=-1)
    latent = ste_fp8(attn.kv_a_layernorm(latent), attn.scale_fmt)
    k_pe = rotate_interleaved(k_pe, cos, sin)                                  # [S, B, Dr]
    kv = attn.kv_b_proj(latent).view(s_len, b, attn.n_heads, attn.nope_dim + attn.v_dim)
    k_nope, v = kv.split([attn.nope_dim, attn.v_dim], dim=-1)

    if copy_head is None and (attn.indexer is None or not (mode.sparse or mode.index_loss or mode.coverage)):
        return attn.o_proj(_dense_sdpa(attn, q_nope, q_pe, k_nope, k_pe, v))
    scores = (torch.einsum("sbhd,tbhd->bhst", q_nope, k_nope)
              + torch.einsum("sbhd,tbd->bhst", q_pe, k_pe)).float() * attn.softmax_scale
    causal = torch.ones(s_len, s_len, dtype=torch.bool, device=x.device).tril()
    keep = causal.expand(b, s_len, s_len)
    index = None
    if attn.indexer is not None and (mode.sparse or mode.index_loss or mode.coverage):
        detached = mode.index_loss is not None
        index = index_logits(attn.indexer, x.detach() if detached else x,
                             qr.detach() if detached else qr, cos, sin).masked_fill(~causal, float("-inf"))
        k = min(mode.index_topk or attn.index_topk, s_len)
        selected = torch.zeros_like(keep).scatter_(2, topk_positions(index.detach().flatten(0, 1), k)
                                                   .view(b, s_len, k), True) & causal
        if mode.sparse:
            keep = selected
    p = scores.masked_fill(~keep[:, None], float("-inf")).softmax(-1)         # [B, H, S, T]
    if copy_head is not None:
        aux.copy_heads[copy_head] = scores[:, 0].masked_fill(~keep, float("-inf")).log_softmax(-1)
    if index is not None and mode.index_loss:
        target = p.detach().sum(1)
        target = target / target.sum(-1, keepdim=True)
        aux.index_kl.append(_kl(target, index, selected if mode.index_loss == "sparse" else keep))
    if index is not None and mode.concentrate and s_len > k:
        rows = slice(k, None, CONCENTRATION_STRIDE)    # queries that see more than k keys, sampled
        late = scores[:, :, rows]                                                  # [B, H, S', T]
        visible = late.masked_fill(~causal[rows], float("-inf")).logsumexp(-1)
        on_selected = late.masked_fill(~selected[:, None, rows], float("-inf")).logsumexp(-1) - visible
        aux.concentration.append(-on_selected.mean())                              # log mass, [B, H, S']
    if index is not None and mode.coverage:
        k = min(mode.index_topk or attn.index_topk, s_len)
        dense = p if not mode.sparse else scores.masked_fill(~causal, float("-inf")).softmax(-1)
        mass = (dense.detach() * selected[:, None]).sum(-1)                    # [B, H, S]
        aux.coverage.append(mass[..., k:].mean() if s_len > k else mass.new_ones(()))
    out = torch.einsum("bhst,tbhd->sbhd", p.to(v.dtype), v)
    return attn.o_proj(out.reshape(s_len, b, -1))


def _dense_sdpa(attn: MLA, q_nope, q_pe, k_nope, k_pe, v) -> torch.Tensor:
    """Causal attention through PyTorch's fused kernel, when no probabilities are needed. -> [S, B, H*Dv]."""
    s_len, b = q_nope.shape[:2]
    q = torch.cat((q_nope, q_pe), dim=-1).permute(1, 2, 0, 3)                   # [B, H, S, Dqk]
    k = torch.cat((k_nope, k_pe[:, :, None].expand(-1, -1, attn.n_heads, -1)), dim=-1).permute(1, 2, 0, 3)
    out = F.scaled_dot_product_attention(q, k, v.permute(1, 2, 0, 3), is_causal=True, scale=attn.softmax_scale)
    return out.permute(2, 0, 1, 3).reshape(s_len, b, -1)


def layer_forward(layer: DecoderLayer, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  mode: Mode, aux: Aux, copy_head: str | None = None) -> torch.Tensor:
    """h: [S, B, D] residual stream -> [S, B, D]."""
    h = h + mla_forward(layer.self_attn, layer.input_layernorm(h), cos, sin, mode, aux, copy_head)
    x = layer.post_attention_layernorm(h)
    if isinstance(layer.mlp, MoE):
        _, ids = layer.mlp.gate(x.detach().flatten(0, 1))
        aux.expert_load.append(torch.bincount(ids.flatten(), minlength=len(layer.mlp.experts)))
        return h + layer.mlp(x.flatten(0, 1)).view_as(h)
    return h + layer.mlp(x)


def rope(model: Transformer, s_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return rope_cos_sin(model.inv_freq, torch.arange(s_len, device=device))


def hidden_states(model: Transformer, tokens: torch.Tensor, mode: Mode, aux: Aux) -> torch.Tensor:
    """tokens [B, S] -> final-normed hidden states [S, B, D] of the main model."""
    cos, sin = rope(model, tokens.shape[1], tokens.device)
    h = model.model.embed_tokens(tokens.t())
    copy_heads = dict(zip(mode.copy_heads, ("previous", "induction"))) if mode.copy_heads else {}
    for i, layer in enumerate(model.model.layers[:model.config.num_hidden_layers]):
        h = layer_forward(layer, h, cos, sin, mode, aux, copy_heads.get(i))
    return model.model.norm(h)


def logits(model: Transformer, tokens: torch.Tensor, mode: Mode = Mode(),
           aux: Aux | None = None) -> torch.Tensor:
    """tokens [B, S] -> logits [B, S, V] fp32, as `model(tokens)` computes them."""
    h = hidden_states(model, tokens, mode, aux if aux is not None else Aux())
    return model.logits(h).transpose(0, 1)


def mtp_logits(model: Transformer, hidden: torch.Tensor, tokens: torch.Tensor, mode: Mode,
               aux: Aux) -> torch.Tensor:
    """MTP: hidden [S, B, D] (states of positions 0..S-1), tokens [B, S] -> logits for t_{i+2}, [B, S-1, V].

    Position i combines h_i with the embedding of t_{i+1}; the MTP layer runs over positions 0..S-2."""
    layer = model.mtp_layers[0]
    s_len = tokens.shape[1] - 1
    cos, sin = rope(model, s_len, tokens.device)
    e = layer.embed_tokens(tokens[:, 1:].t())
    e = torch.cat((torch.zeros_like(e[:1]), e[1:]))      # position 0 sees no embedding, as in inference
    z = layer.eh_proj(torch.cat((layer.enorm(e), layer.hnorm(hidden[:s_len])), dim=-1))
    z = layer_forward(layer, z, cos, sin, mode, aux)
    return layer.shared_head(z).transpose(0, 1)


def induction_targets(tokens: torch.Tensor) -> torch.Tensor:
    """[B, S] -> [B, S, S] bool: key u is a target of query s when the token before u is an earlier
    occurrence of token s (u - 1 < s), i.e. u is where that earlier occurrence went on."""
    s_len = tokens.shape[1]
    earlier = torch.ones(s_len, s_len, dtype=torch.bool, device=tokens.device).tril(-1)
    same = (tokens[:, :, None] == tokens[:, None, :]) & earlier              # [B, S, T]: t < s
    targets = torch.zeros_like(same)
    targets[:, :, 1:] = same[:, :, :-1]
    return targets


def copy_head_loss(aux: Aux, tokens: torch.Tensor) -> torch.Tensor:
    """Supervision of a copying circuit (an induction head), tokens [B, S] the inputs: the previous-token
    head's -log p(s -> s-1) over queries s >= 1, plus the induction head's -log of the probability it
    puts on `induction_targets`, over the queries that have any. A layer-1 head reading what a
    layer-0 head wrote about the previous token is how transformers come to copy from their context,
    but the pair is slow to form unaided: on pure copy practice (random 6-48-token stretches, each
    repeated at once) this narrow model was still at 7.5 nats after 2400 steps (uniform: 8.3); with
    this loss (weight 0.1) it copies them at 0.09 nats after 1100."""
    previous, induction = aux.copy_heads["previous"], aux.copy_heads["induction"]
    s = torch.arange(1, tokens.shape[1], device=tokens.device)
    loss = -previous[:, s, s - 1].mean()
    targets = induction_targets(tokens)
    queries = targets.any(-1)
    if queries.any():
        loss = loss - induction.masked_fill(~targets, float("-inf")).logsumexp(-1)[queries].mean()
    return loss


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token loss; logits [B, S, V], targets [B, S]; `weights` [B, S] weight each token."""
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    if weights is None:
        return loss.mean()
    w = weights.flatten().float()
    return (loss * w).sum() / w.sum().clamp_min(1.0)
