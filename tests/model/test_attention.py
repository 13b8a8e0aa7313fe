"""Sparse (DSA) vs dense MLA on the same weights, and cache-based decoding vs one full forward.

The tiny config has index_topk = 64: a 48-token context is below it (sparse must equal dense), a
200-token context is above it (the indexer really drops keys).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from deepseek.model import ForwardBatch, Transformer
from deepseek.model.checkpoint import init_random_weights
from kernel_support import needs_int8_dot


@contextlib.contextmanager
def indexer_always_on(model):
    """Run the indexer and top-k even where they cannot change the result (T <= index_topk)."""
    attns = [layer.self_attn for layer in model.model.layers]
    for a in attns:
        a.force_indexer = True
    try:
        yield
    finally:
        for a in attns:
            a.force_indexer = False


def incremental_logits(model, tokens, prefill_chunks, sparse):
    """Prefill `tokens` in the given chunk sizes, then decode the rest one token at a time."""
    cache = model.new_cache(1, len(tokens))
    sizes = list(prefill_chunks) + [1] * (len(tokens) - sum(prefill_chunks))
    out, start = [], 0
    for size in sizes:
        batch = ForwardBatch(starts=(start,), lengths=(size,), sparse=(sparse,), cache=cache)
        out.append(model.logits(model.step(tokens[start:start + size], batch)))
        start += size
    return torch.cat(out)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 1024, (2, 200), generator=torch.Generator().manual_seed(0))


def test_sparse_equals_dense_when_context_fits_in_index_topk(tiny_model, tokens):
    short = tokens[:, :48]
    dense = tiny_model(short, attention="dense")
    with indexer_always_on(tiny_model):
        sparse = tiny_model(short, attention="sparse")
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)


def test_sparse_equals_dense_in_bf16_too(tiny_config, tokens):
    bf16 = init_random_weights(Transformer(tiny_config, dtype=torch.bfloat16), seed=0).eval()
    with torch.inference_mode():
        dense = bf16(tokens[:1, :48], attention="dense")
        with indexer_always_on(bf16):
            sparse = bf16(tokens[:1, :48], attention="sparse")
    # Every visible key is selected, so the arithmetic is the same: equal to the last bit.
    torch.testing.assert_close(sparse, dense, atol=0, rtol=0)


def test_sparse_differs_from_dense_beyond_index_topk(tiny_model, tokens):
    dense = tiny_model(tokens, attention="dense")
    sparse = tiny_model(tokens, attention="sparse")
    torch.testing.assert_close(sparse[:, :64], dense[:, :64], atol=1e-5, rtol=1e-5)
    assert (sparse[:, 64:] - dense[:, 64:]).abs().max() > 1e-2


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
@pytest.mark.parametrize("chunks", [(40,), (17, 23), (1,)], ids=["prefill40", "chunked17+23", "decode-only"])
def test_decoding_through_the_cache_equals_one_full_forward(tiny_model, tokens, sparse, chunks):
    """Crosses T = index_topk = 64 and goes to 100 tokens: absorbed decode vs expanded prefill."""
    seq = tokens[0, :100]
    full = tiny_model(seq[None], attention="sparse" if sparse else "dense")[0]
    step = incremental_logits(tiny_model, seq, chunks, sparse)
    torch.testing.assert_close(step, full, atol=1e-4, rtol=1e-4)


def test_long_chunked_prefill_equals_full_forward_in_sparse_mode(tiny_model, tokens):
    seq = tokens[1]
    full = tiny_model(seq[None])[0]
    step = incremental_logits(tiny_model, seq, (70, 60, 50), sparse=True)
    torch.testing.assert_close(step, full, atol=1e-4, rtol=1e-4)


@needs_int8_dot
def test_long_context_sparse_decode_over_the_key_sketch_picks_the_exact_top_k(tiny_model, monkeypatch):
    """Past 4 x index_topk cached keys a decode step scans the int8 key sketch, not the keys: the
    logits equal those of decoding with the exact fp32 scan of every key, to the last bit."""
    import deepseek.model.indexer as indexer

    original, calls = indexer.sketched_topk, []

    def counted(*args):
        calls.append(1)
        return original(*args)

    seq = torch.randint(0, 1024, (300,), generator=torch.Generator().manual_seed(4))
    monkeypatch.setattr(indexer, "sketched_topk", counted)
    sketched = incremental_logits(tiny_model, seq, (280,), sparse=True)
    assert len(calls) == 20 * tiny_model.config.num_hidden_layers       # every decode step, every layer
    monkeypatch.setattr(indexer, "_SCREEN_FROM", 10 ** 9)
    assert torch.equal(sketched, incremental_logits(tiny_model, seq, (280,), sparse=True))
    assert len(calls) == 20 * tiny_model.config.num_hidden_layers


def test_a_flat_batch_of_mixed_sequences_equals_each_alone(tiny_model, tokens):
    """Two sequences in one step (one prefilling, one decoding, different modes) don't interact."""
    a, b = tokens[0, :90], tokens[1, :30]
    cache = tiny_model.new_cache(2, 100)
    prime = ForwardBatch(starts=(0,), lengths=(89,), sparse=(True,), cache=cache)
    tiny_model.step(a[:89], prime)
    batch = ForwardBatch(starts=(89, 0), lengths=(1, 30), sparse=(True, False), cache=cache)
    h = tiny_model.step(torch.cat((a[89:], b)), batch)
    alone_a = tiny_model(a[None], attention="sparse")[0, -1]
    alone_b = tiny_model(b[None], attention="dense")[0]
    torch.testing.assert_close(tiny_model.logits(h[0]), alone_a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(tiny_model.logits(h[1:]), alone_b, atol=1e-4, rtol=1e-4)


def test_sparse_decode_reads_only_the_selected_rows(tiny_model, tokens):
    """Corrupting cached latent rows the indexer did not pick leaves a sparse decode step unchanged."""
    attn = tiny_model.model.layers[1].self_attn
    cfg = tiny_model.config
    seq = tokens[0, :150]
    cache = tiny_model.new_cache(1, 150)
    tiny_model.step(seq[:149], ForwardBatch(starts=(0,), lengths=(149,), sparse=(True,), cache=cache))

    picked = {}
    original_select = attn.indexer.select

    def spy(*args, **kwargs):
        picked["rows"] = original_select(*args, **kwargs)
        return picked["rows"]

    def decode():
        batch = ForwardBatch(starts=(149,), lengths=(1,), sparse=(True,), cache=cache)
        return tiny_model.logits(tiny_model.step(seq[149:], batch))

    attn.indexer.select = spy
    try:
        before = decode()
        chosen = set(picked["rows"][0].tolist())
        assert len(chosen) == cfg.index_topk
        unpicked = torch.tensor(sorted(set(range(149)) - chosen))
        cache.latent[1][0, unpicked] += 100.0          # garbage in rows attention must not read
        after = decode()
        torch.testing.assert_close(after, before, atol=0, rtol=0)
        cache.latent[1][0, sorted(chosen)[:5]] += 100.0
        assert not torch.allclose(decode(), before)
    finally:
        del attn.indexer.select


def test_mtp_predicts_from_hidden_states_and_next_tokens(tiny_model, tokens):
    seq = tokens[0, :20]
    cache = tiny_model.new_cache(1, 20)
    batch = ForwardBatch(starts=(0,), lengths=(19,), sparse=(True,), cache=cache)
    hidden = tiny_model.step(seq[:19], batch)
    logits = tiny_model.mtp_logits(hidden, seq[1:20], batch)
    assert logits.shape == (19, tiny_model.config.vocab_size) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()

    def mtp_with_next_tokens(next_tokens):
        c = tiny_model.new_cache(1, 20)
        b = ForwardBatch(starts=(0,), lengths=(19,), sparse=(True,), cache=c)
        return tiny_model.mtp_logits(tiny_model.step(seq[:19], b), next_tokens, b)

    # Position 0's embedding is masked (vLLM), so the token there changes nothing at all...
    changed = seq[1:20].clone()
    changed[0] = (changed[0] + 1) % 1024
    torch.testing.assert_close(mtp_with_next_tokens(changed), logits, atol=0, rtol=0)
    # ...while a token at position 5 changes row 5 (and later rows, through attention) only.
    changed = seq[1:20].clone()
    changed[5] = (changed[5] + 1) % 1024
    other = mtp_with_next_tokens(changed)
    torch.testing.assert_close(other[:5], logits[:5], atol=0, rtol=0)
    assert not torch.allclose(other[5], logits[5])


def test_tensor_only_decode_equals_step_on_the_same_dense_decode_batch(tiny_model):
    """`Transformer.decode` (what the engine runs, and compiles, for dense decode steps) against
    `step` on the same batch: three sequences of different lengths, one new token each."""
    from deepseek.model.cache import DecodeRows
    from deepseek.model.indexer import sketch_rows, sketch_rows_at

    lengths, max_len = (5, 17, 40), 48
    g = torch.Generator().manual_seed(3)
    caches = [tiny_model.new_cache(len(lengths), max_len) for _ in range(2)]
    prompt = [torch.randint(2, 1000, (n,), generator=g) for n in lengths]
    for cache in caches:                       # the same prefill into both caches
        batch = ForwardBatch(starts=(0,) * 3, lengths=lengths, sparse=(False,) * 3, cache=cache)
        tiny_model.step(torch.cat(prompt), batch)
    new = torch.randint(2, 1000, (3,), generator=g)
    positions = torch.tensor(lengths)
    stepped = tiny_model.step(new, ForwardBatch(starts=lengths, lengths=(1,) * 3, sparse=(False,) * 3,
                                                cache=caches[0]))

    def flat(ts):
        return [t.flatten(0, 1) for t in ts]

    c = caches[1]
    slot_table = torch.arange(len(lengths) * max_len).view(len(lengths), max_len)
    rows = DecodeRows.from_slot_table(flat(c.latent), flat(c.k_pe), flat(c.index_k),
                                      c.index_sketch, slot_table, positions)
    decoded = tiny_model.decode(new, positions, rows)
    assert torch.equal(decoded, stepped)
    for kind in ("latent", "k_pe", "index_k", "index_sketch"):
        for a, b in zip(getattr(caches[0], kind) or (), getattr(caches[1], kind) or ()):
            for x, y in zip(*((a, b) if kind == "index_sketch" else ((a,), (b,)))):
                assert torch.equal(x, y), kind
    layers = tiny_model.config.num_hidden_layers             # (the cache's last layer is MTP's)
    for keys, sketch in zip(c.index_k[:layers], (c.index_sketch or [])[:layers]):   # every written key's sketch
        keys = keys.flatten(0, 1)                                           # slot b * max_len + t
        written = (keys.abs().amax(-1) > 0).nonzero().squeeze(1)
        assert written.numel() == sum(lengths) + 3
        for got, want in zip(sketch_rows_at(sketch, written), sketch_rows(keys[written])):
            assert torch.equal(got, want)
