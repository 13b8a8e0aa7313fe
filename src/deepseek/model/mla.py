"""Multi-head Latent Attention with DeepSeek Sparse Attention (spec §7, §8).

Every token is compressed to a latent `c` (kv_lora_rank) plus one shared rotary key `k_pe`; only
those are cached. Attention has two equivalent forms:

* **expanded** (prefill, S > 1): up-project the cached latents to per-head keys and values with
  `kv_b_proj` and run ordinary multi-head attention;
* **absorbed** (decode, S == 1): fold `W_UK` into the query and `W_UV` into the output, so each head
  attends directly over the 576-wide cached rows (MQA form). With DSA it gathers only the
  `index_topk` rows the indexer picked: O(index_topk) per step, whatever the context.

Both use `softmax_scale = qk_head_dim^-0.5 · mscale²` (YaRN). Sparse equals dense whenever the
context is ≤ index_topk, because then every visible key is selected.
"""

from __future__ import annotations

import torch
from torch import nn

from . import kernels
from .cache import DecodeRows, ForwardBatch
from .config import ModelConfig
from .fp8 import fake_quantize_activation
from .indexer import Indexer
from .layers import Linear, RMSNorm, fused_pairs, run_fused
from .rope import rotate_interleaved

# Query rows per chunk in the expanded form, so [rows, H, T] scores stay near this many floats.
_SCORE_BUDGET = 1 << 24


class MLA(nn.Module):
    """HF names: `self_attn.{q_a_proj, q_a_layernorm, q_b_proj, kv_a_proj_with_mqa, kv_a_layernorm,
    kv_b_proj, o_proj, indexer}`."""

    def __init__(self, config: ModelConfig, layer_id: int, dtype: torch.dtype | None = None):
        super().__init__()
        self.layer_id = layer_id
        self.n_heads = config.num_attention_heads
        self.nope_dim, self.rope_dim = config.qk_nope_head_dim, config.qk_rope_head_dim
        self.v_dim, self.kv_rank = config.v_head_dim, config.kv_lora_rank
        self.softmax_scale = config.softmax_scale
        q = config.quantization_config
        self.scale_fmt = q.scale_fmt if q is not None else "ue8m0"
        # Tokens beyond this many visible keys make the indexer matter; at or below it, DSA == dense.
        self.index_topk = config.index_topk
        # Tests set this to run the indexer even when it cannot change the result.
        self.force_indexer = False
        d, qk = config.hidden_size, config.qk_head_dim
        if config.q_lora_rank is None:
            self.q_proj = Linear(d, self.n_heads * qk, dtype=dtype)
        else:
            self.q_a_proj = Linear(d, config.q_lora_rank, dtype=dtype)
            self.q_a_layernorm = RMSNorm(config.q_lora_rank, config.rms_norm_eps)
            self.q_b_proj = Linear(config.q_lora_rank, self.n_heads * qk, dtype=dtype)
        self.kv_a_proj_with_mqa = Linear(d, self.kv_rank + self.rope_dim, dtype=dtype)
        self.kv_a_layernorm = RMSNorm(self.kv_rank, config.rms_norm_eps)
        self.kv_b_proj = Linear(self.kv_rank, self.n_heads * (self.nope_dim + self.v_dim), dtype=dtype)
        self.o_proj = Linear(self.n_heads * self.v_dim, d, dtype=dtype)
        self.indexer = Indexer(config, dtype) if config.has_indexer else None

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """What every new token contributes, before any attention: x [N, D] ->
        (qr [N, q_lora_rank] or None, q_nope [N, H, Dn], q_pe [N, H, Dr] rotated,
         latent [N, R] normed and FP8-rounded, k_pe [N, Dr] rotated, indexer key [N, Di] or None)."""
        n = x.shape[0]
        q, kv, *index = run_fused(x, self.fused_input, self._input_projections())
        qr = None
        if not hasattr(self, "q_proj"):
            qr = self.q_a_layernorm(q)                                         # [N, q_lora_rank]
            q = self.q_b_proj(qr)
        q = q.view(n, self.n_heads, self.nope_dim + self.rope_dim)
        q_nope, q_pe = q.split([self.nope_dim, self.rope_dim], dim=-1)
        q_pe = rotate_interleaved(q_pe, cos, sin)                              # [N, H, Dr]
        latent, k_pe = kv.split([self.kv_rank, self.rope_dim], dim=-1)
        # The final reference round-trips the latent through FP8 to match its FP8 KV cache.
        latent = fake_quantize_activation(self.kv_a_layernorm(latent), self.scale_fmt)  # [N, R]
        k_pe = rotate_interleaved(k_pe, cos, sin)                              # [N, Dr]
        index_k = self.indexer.keys_of(index[0], cos, sin) if index else None
        return qr, q_nope, q_pe, latent, k_pe, index_k

    def _input_projections(self) -> list[Linear]:
        """The Linears that read the layer input: q (or q_a), kv_a and the indexer's key."""
        first = self.q_proj if hasattr(self, "q_proj") else self.q_a_proj
        return [first, self.kv_a_proj_with_mqa] + ([self.indexer.wk] if self.indexer is not None else [])

    fused_input: torch.Tensor | None = None     # set by `fuse`: the input projections as one product

    def fuse(self) -> None:
        """After `Linear.prepare_inference`: the input projections in one product (`fused_pairs`)."""
        self.fused_input = fused_pairs(self._input_projections())

    def forward(self, x: torch.Tensor, batch: ForwardBatch, cos: torch.Tensor,
                sin: torch.Tensor) -> torch.Tensor:
        """x: [N, D] (attn_norm output of a flat batch) -> [N, D]."""
        n = x.shape[0]
        qr, q_nope, q_pe, latent, k_pe, index_k = self.project(x, cos, sin)
        out = torch.empty(n, self.n_heads, self.v_dim, dtype=x.dtype, device=x.device)
        cache, layer = batch.cache, self.layer_id
        cache.store_tokens(layer, batch.token_seqs(x.device), batch.positions(x.device), latent, k_pe, index_k)
        decodes: list[tuple[int, int, int, torch.Tensor | None]] = []   # (seq, flat row, end, sparse picks)
        prompts: dict[int, list[tuple[int, slice]]] = {}    # length -> dense chunks from position 0
        for seq, sl, start, length in batch.slices():
            end = start + length
            sparse = batch.sparse[seq] and self.needs_index(end)
            if length > 1 and start == 0 and not sparse:    # attended together with their equals
                prompts.setdefault(length, []).append((seq, sl))
            elif length > 1:   # prefill chunk: expanded form
                c_all, pe_all, ik_all = cache.load(layer, seq, end)
                topk = self.indexer.select(x[sl], qr[sl], ik_all, start, cos[sl], sin[sl]) if sparse else None
                out[sl] = self._expanded(q_nope[sl][None], q_pe[sl][None], c_all[None], pe_all[None], start, topk)[0]
            elif sparse:     # sparse decode: scan every indexer key (cheap), keep index_topk rows
                # Over a long context the scan reads the keys' int8 sketch where it lies, and only the
                # candidates' keys (see Indexer.select); otherwise every key.
                sketch = cache.load_index_sketch(layer, seq, end) if self.indexer.screens(end, 1) else None
                keys = cache.load_index_keys(layer, seq, end) if sketch is None else None
                picks = self.indexer.select(x[sl], qr[sl], keys, start, cos[sl], sin[sl], sketch)[0]
                decodes.append((seq, sl.start, end, picks))
            else:            # dense decode: every cached row
                decodes.append((seq, sl.start, end, None))
        for length, group in prompts.items():   # G whole prompts of one length: one batched attention
            rows = [cache.load(layer, seq, length)[:2] for seq, _ in group]
            got = self._expanded(torch.stack([q_nope[sl] for _, sl in group]), torch.stack([q_pe[sl] for _, sl in group]),
                                 torch.stack([c for c, _ in rows]), torch.stack([pe for _, pe in rows]), 0, None)
            for (_, sl), o in zip(group, got):
                out[sl] = o
        if decodes:
            self._decode(decodes, q_nope, q_pe, cache, out)
        return self.o_proj(out.view(n, -1))

    def decode(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rows: DecodeRows) -> torch.Tensor:
        """Dense decode of B sequences with one new token each, all metadata in tensors (no Python
        per sequence, so it compiles): write the new rows, attend to every visible row where it lies.
        The same arithmetic as `_decode` on a decode-only batch. x: [B, D] -> [B, D]."""
        b, layer = x.shape[0], self.layer_id
        _, q_nope, q_pe, latent, k_pe, index_k = self.project(x, cos, sin)
        rows.write(layer, latent, k_pe, index_k)
        out = self._absorbed(q_nope, q_pe, rows.latent[layer], rows.k_pe[layer], rows.visible, rows.read_slots)
        return self.o_proj(out.reshape(b, -1))

    def _decode(self, decodes, q_nope, q_pe, cache, out) -> None:
        """Decode form for every decoding sequence of the batch at once: the rows each attends to
        (all of them, or the indexer's picks) are named by slot, and the native kernel reads them
        where they lie in the cache (torch's ops gather them)."""
        device = out.device
        if len(decodes) == 1:   # one sequence: no padding
            seq, row, end, picks = decodes[0]
            if picks is None and not self._native():
                c, pe, _ = cache.load(self.layer_id, seq, end)    # torch's ops: a view where the rows are one run
                out[row:row + 1] = self._absorbed(q_nope[row:row + 1], q_pe[row:row + 1], c[None], pe[None], None)
                return
            positions = (torch.arange(end, device=device) if picks is None else picks)[None]
            rows, visible = slice(row, row + 1), None
        else:
            counts = torch.tensor([end if picks is None else picks.numel() for _, _, end, picks in decodes],
                                  device=device)
            span = torch.arange(int(counts.max()), device=device)
            visible = span[None, :] < counts[:, None]                            # [B, K]
            positions = torch.where(visible, span[None, :], 0)                   # padding reads row 0
            for i, (_, _, _, picks) in enumerate(decodes):
                if picks is not None:
                    positions[i, :picks.numel()] = picks
            rows = torch.tensor([d[1] for d in decodes], device=device)
        seqs = torch.tensor([d[0] for d in decodes], device=device)
        latent, k_pe = cache.layer_rows(self.layer_id)
        out[rows] = self._absorbed(q_nope[rows], q_pe[rows], latent, k_pe, visible, cache.slots_of(seqs, positions))

    def needs_index(self, context: int) -> bool:
        if self.indexer is None:
            raise ValueError("this checkpoint has no lightning indexer: use dense attention")
        return context > self.index_topk or self.force_indexer

    def _visible(self, s_len: int, t_len: int, start: int, topk: torch.Tensor | None,
                 device: torch.device) -> torch.Tensor:
        """[S, T] bool: key t is visible to query s (causal, and selected by the indexer if sparse)."""
        pos = start + torch.arange(s_len, device=device)
        visible = torch.arange(t_len, device=device)[None, :] <= pos[:, None]
        if topk is not None:
            selected = torch.zeros(s_len, t_len, dtype=torch.bool, device=device)
            selected.scatter_(1, topk, True)
            visible &= selected
        return visible

    def _expanded(self, q_nope, q_pe, c, k_pe, start, topk):
        """Prefill form, for G sequences whose chunks start at the same position and have the same
        length. q_nope [G,S,H,Dn], q_pe [G,S,H,Dr], c [G,T,R], k_pe [G,T,Dr] -> [G,S,H,Dv]; topk
        (the indexer's picks, [S, K]) only with G == 1."""
        g, s_len, t_len = q_nope.shape[0], q_nope.shape[1], c.shape[1]
        kv = self.kv_b_proj(c).view(g, t_len, self.n_heads, self.nope_dim + self.v_dim)
        k_nope, v = kv.split([self.nope_dim, self.v_dim], dim=-1)
        visible = self._visible(s_len, t_len, start, topk, c.device)
        out = torch.empty(g, s_len, self.n_heads, self.v_dim, dtype=q_nope.dtype, device=c.device)
        rows = max(1, _SCORE_BUDGET // max(1, g * self.n_heads * t_len))
        for r in range(0, s_len, rows):
            scores = (torch.einsum("gshd,gthd->gsht", q_nope[:, r:r + rows], k_nope)
                      + torch.einsum("gshd,gtd->gsht", q_pe[:, r:r + rows], k_pe)).float() * self.softmax_scale
            scores.masked_fill_(~visible[None, r:r + rows, None, :], float("-inf"))
            p = scores.softmax(dim=-1).to(v.dtype)
            out[:, r:r + rows] = torch.einsum("gsht,gthd->gshd", p, v)
        return out

    def _absorbed(self, q_nope, q_pe, c, k_pe, visible, slots=None):
        """Decode form (MQA over the latent), one query per sequence, batched over B sequences.

        q_nope [B,H,Dn], q_pe [B,H,Dr]; c [B,K,R], k_pe [B,K,Dr]: each sequence's K rows (all of
        them when dense, the index_topk picks when sparse), so the cost is O(K), not O(T). Or, with
        `slots` [B,K], c [S,R] and k_pe [S,Dr] are a layer's cache rows and sequence b's rows are
        those at slots[b]. visible [B,K] masks padding (None: all visible). Returns [B,H,Dv].
        """
        w_uk, w_uv = self.frozen_absorbed or self._absorbed_weights(q_nope.dtype)  # [H,Dn,R], [H,R,Dv]
        native = self._native()
        mm = kernels.matmul if native else torch.matmul
        if native and self.frozen_pairs is not None and q_nope.dtype == torch.bfloat16:
            (w_uk, w_uv), mm = self.frozen_pairs, kernels.packed_matmul
        q_lat = mm(q_nope.transpose(0, 1), w_uk).transpose(0, 1)                  # [B,H,R]
        if native:   # every decode form runs one kernel: a sequence's result is the same in any of them
            if slots is None:
                b, k = c.shape[:2]
                c, k_pe = c.reshape(b * k, -1), k_pe.reshape(b * k, -1)
                slots = torch.arange(b * k, device=c.device).view(b, k)
            o_lat = kernels.latent_attention(q_lat, q_pe, c, k_pe, slots, visible, self.softmax_scale)
        else:
            if slots is not None:
                c, k_pe = c[slots], k_pe[slots]
            scores = torch.baddbmm(torch.bmm(q_pe, k_pe.transpose(1, 2)), q_lat, c.transpose(1, 2)).float()
            scores = scores * self.softmax_scale                                   # [B,H,K] fp32
            if visible is not None:
                scores.masked_fill_(~visible[:, None, :], float("-inf"))
            o_lat = torch.matmul(scores.softmax(dim=-1).to(c.dtype), c)          # [B,H,R]
        return mm(o_lat.transpose(0, 1), w_uv).transpose(0, 1)                    # [B,H,Dv]

    # Set by `prepare_inference` when the weights will not change again: read with no checks.
    frozen_absorbed: tuple[torch.Tensor, torch.Tensor] | None = None
    # Set by `prepare_inference` on CPU where `kernels` built: no-grad decode products use them,
    # and bf16 ones the frozen absorbed weights packed for the pair products (`kernels.pack`).
    native_kernels = False
    frozen_pairs: tuple[torch.Tensor, torch.Tensor] | None = None

    def _native(self) -> bool:
        """Whether this call's decode products and attention run the native kernels (no autograd)."""
        return self.native_kernels and not torch.is_grad_enabled()

    def prepare_inference(self, dtype: torch.dtype) -> None:
        if self.kv_b_proj.weight.dtype != torch.float8_e4m3fn:
            self.frozen_absorbed = self._absorbed_weights(dtype)
        self.native_kernels = self.kv_b_proj.weight.device.type == "cpu" and kernels.available()
        if self.native_kernels and self.frozen_absorbed is not None:
            pairs = tuple(kernels.pack(w) for w in self.frozen_absorbed)
            self.frozen_pairs = pairs if None not in pairs else None
        if self.indexer is not None:
            self.indexer.prepare_inference()

    def _absorbed_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """W_UK [H,Dn,R] and W_UV^T [H,R,Dv] from kv_b_proj, contiguous; cached until the weight changes."""
        weight = self.kv_b_proj.weight
        key = (dtype, weight.data_ptr(), weight._version)
        cached = getattr(self, "_absorbed_cache", None)
        if cached is None or cached[0] != key:
            w = self.kv_b_proj.dequantized_weight(dtype).view(self.n_heads, self.nope_dim + self.v_dim, self.kv_rank)
            cached = (key, (w[:, :self.nope_dim].contiguous(), w[:, self.nope_dim:].transpose(1, 2).contiguous()))
            if weight.dtype != torch.float8_e4m3fn:   # FP8-resident weights stay small: never cache a copy
                self._absorbed_cache = cached
        return cached[1]
