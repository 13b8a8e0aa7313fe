"""The paged cache: the model sees the same attention state as with a contiguous cache, prefixes are
shared only within a tenant, unreferenced blocks are evicted LRU, and every block stays accounted for."""

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from deepseek.engine.blocks import BlockManager
from deepseek.engine.cache import PagedKVCache
from deepseek.model import ForwardBatch, Transformer
from kernel_support import needs_int8_dot

BLOCK = 16


@pytest.fixture
def model(tiny_model) -> Transformer:
    return tiny_model   # fp32, index_topk 64: contexts past 64 tokens run the indexer


def new_cache(model: Transformer, num_blocks: int = 32) -> PagedKVCache:
    return PagedKVCache(model.config, model.num_cache_layers, num_blocks, BLOCK, torch.float32)


def tokens_of(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 1024, (n,), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def run_chunks(model, kv_cache, tokens, chunks, start=0, sparse=True) -> torch.Tensor:
    """Feed one sequence's `tokens` in chunks from position `start`; logits of every fed token."""
    out = []
    for n in chunks:
        batch = ForwardBatch((start,), (n,), (sparse,), kv_cache)
        out.append(model.logits(model.step(tokens[start:start + n], batch)))
        start += n
    return torch.cat(out)


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_paged_cache_gives_the_model_the_same_logits_as_a_contiguous_cache(model, sparse):
    tokens = tokens_of(110, seed=0)
    blocks = [11, 3, 14, 0, 7, 9, 5]   # scattered: 110 tokens need 7 blocks of 16
    chunks = [37, 63] + [1] * 10        # chunked prefill, then decode steps
    got = run_chunks(model, new_cache(model).view([blocks]), tokens, chunks, sparse=sparse)
    # Same chunks over a contiguous buffer: only the storage differs, so the result must be exact.
    assert torch.equal(got, run_chunks(model, model.new_cache(1, 110), tokens, chunks, sparse=sparse))
    with torch.no_grad():
        want = model(tokens[None], attention="sparse" if sparse else "dense")[0]
    assert torch.allclose(got, want, atol=1e-4)


@needs_int8_dot
def test_long_sparse_decode_scans_the_paged_key_sketch_and_picks_what_the_keys_would(model):
    """Past 256 = 4 x index_topk keys a sparse decode step scans the int8 key sketch: each stored
    sketch row is the sketch of its stored key, and the logits equal those of a cache without one."""
    from deepseek.model.indexer import sketch_rows, sketch_rows_at

    tokens = tokens_of(290, seed=0)
    blocks = torch.randperm(32, generator=torch.Generator().manual_seed(0))[:19].tolist()  # scattered
    chunks = [37, 203] + [1] * 50
    view = new_cache(model).view([blocks])
    got = run_chunks(model, view, tokens, chunks)
    plain = model.new_cache(1, 290)
    plain.index_sketch = None                      # the bf16 screen over the keys themselves
    assert torch.equal(got, run_chunks(model, plain, tokens, chunks))
    for layer in range(model.config.num_hidden_layers):
        stored = view.load_index_sketch(layer, 0, 290)
        assert torch.equal(stored.slots, view.slots[0][:290])              # read in place, by slot
        for got, want in zip(sketch_rows_at(stored.sketch, stored.slots), sketch_rows(view.load_index_keys(layer, 0, 290))):
            assert torch.equal(got, want)


@torch.no_grad()
def test_two_sequences_in_one_batch_do_not_interfere(model):
    a, b = tokens_of(75, seed=1), tokens_of(30, seed=2)
    tables = [[4, 1, 6, 8, 2], [0, 5]]   # 75 and 30 tokens, interleaved ids
    cache = new_cache(model, num_blocks=10)
    prefill = ForwardBatch((0, 0), (72, 28), (True, True), cache.view(tables))
    h = model.step(torch.cat([a[:72], b[:28]]), prefill)
    got_a, got_b = [model.logits(h[:72])], [model.logits(h[72:])]
    for pa, pb in [(72, 28), (73, 29)]:   # batched decode steps
        batch = ForwardBatch((pa, pb), (1, 1), (True, True), cache.view(tables))
        h = model.logits(model.step(torch.stack([a[pa], b[pb]]), batch))
        got_a.append(h[:1])
        got_b.append(h[1:])
    assert torch.allclose(torch.cat(got_a), model(a[None, :74])[0], atol=1e-4)
    assert torch.allclose(torch.cat(got_b), model(b[None, :30])[0], atol=1e-4)


def test_a_prompt_sharing_a_prefix_reuses_its_full_blocks_and_gets_the_same_logits(model):
    manager, cache = BlockManager(32, BLOCK), new_cache(model)
    first = tokens_of(80, seed=3)
    second = torch.cat([first[:70], tokens_of(20, seed=4)])   # 70 shared tokens = 4 full blocks + 6
    table = manager.allocate(first.tolist())
    run_chunks(model, cache.view([table.blocks]), first, [80])
    manager.register(table, first.tolist(), 80)
    first_blocks = list(table.blocks)
    manager.free(table)

    reused = manager.allocate(second.tolist())
    assert reused.num_cached_tokens == 64
    assert reused.blocks[:4] == first_blocks[:4]
    assert not set(reused.blocks[4:]) & set(first_blocks[:4])
    # 90 tokens > index_topk: the indexer reads keys from the reused blocks too.
    got = run_chunks(model, cache.view([reused.blocks]), second, [26], start=64)
    with torch.no_grad():
        want = model(second[None])[0, 64:]
    assert torch.allclose(got, want, atol=1e-4)


def computed(manager: BlockManager, prompt: list[int], salt: bytes = b""):
    """Allocate a prompt and register it as fully computed, as a scheduler would after prefill."""
    table = manager.allocate(prompt, salt)
    manager.register(table, prompt, len(prompt))
    return table


def test_the_block_holding_the_last_prompt_token_is_never_reused():
    manager = BlockManager(16, 4)
    computed(manager, list(range(12)))                              # three full blocks, registered
    assert manager.allocate(list(range(12))).num_cached_tokens == 8   # block 3 holds the last token
    assert manager.allocate(list(range(13))).num_cached_tokens == 12
    assert manager.allocate(list(range(4))).num_cached_tokens == 0
    manager.check_integrity()


def test_only_computed_blocks_are_shared():
    manager = BlockManager(16, 4)
    running = manager.allocate(list(range(12)))
    manager.register(running, list(range(12)), 5)                   # one block computed so far
    assert manager.allocate(list(range(12))).num_cached_tokens == 4


def test_different_salts_never_share_blocks_even_for_identical_prompts():
    manager, prompt = BlockManager(16, 4), list(range(13))
    alice = computed(manager, prompt, salt=b"alice")
    bob = manager.allocate(prompt, salt=b"bob")
    assert bob.num_cached_tokens == 0
    assert not set(alice.blocks) & set(bob.blocks)
    assert manager.allocate(prompt, salt=b"alice").num_cached_tokens == 12


def test_unreferenced_cached_blocks_are_evicted_least_recently_released_first():
    manager = BlockManager(num_blocks=5, block_size=2)
    a, b = computed(manager, [1, 2, 3]), computed(manager, [4, 5, 6])   # each: a cached full block + 1
    manager.free(a)
    manager.free(b)
    assert manager.num_free_blocks == 5 and manager.usage() == 0.0
    big = manager.allocate(list(range(10, 17)))   # 4 blocks: the 3 free ones, then evicts a's block
    manager.free(big)
    assert manager.allocate([1, 2, 3]).num_cached_tokens == 0
    assert manager.allocate([4, 5, 6]).num_cached_tokens == 2
    manager.check_integrity()


def test_eviction_takes_a_cached_prefix_tail_before_its_head():
    manager = BlockManager(num_blocks=3, block_size=2)
    manager.free(computed(manager, [1, 2, 3, 4, 5]))   # two cached blocks and a free one
    manager.free(manager.allocate([9, 9, 9]))           # the free block, then evicts one cached block
    assert manager.allocate([1, 2, 3, 4, 5]).num_cached_tokens == 2


def test_freeing_every_sequence_returns_every_block():
    manager = BlockManager(8, 4)
    tables = [computed(manager, [7] * 9), manager.allocate([7] * 9), manager.allocate([1, 2])]
    manager.append(tables[2], 3)
    assert manager.usage() == pytest.approx(6 / 8)
    assert not manager.can_allocate([3] * 9)
    for table in tables:
        manager.free(table)
    manager.check_integrity()
    assert manager.num_free_blocks == 8 and manager.usage() == 0.0
    with pytest.raises(ValueError, match="not live"):
        manager.free(tables[0])


def test_check_integrity_detects_a_leaked_refcount():
    manager = BlockManager(8, 4)
    table = manager.allocate(list(range(6)))
    manager.check_integrity()
    manager._refs[table.blocks[0]] += 1
    with pytest.raises(AssertionError, match="refcount 2 but 1 live block tables"):
        manager.check_integrity()


def test_check_integrity_detects_a_block_both_free_and_held():
    manager = BlockManager(8, 4)
    table = manager.allocate(list(range(6)))
    manager._free.append(table.blocks[1])
    with pytest.raises(AssertionError, match="exactly one state"):
        manager.check_integrity()


def test_writing_past_a_sequences_blocks_is_refused(model):
    view = new_cache(model, num_blocks=4).view([[2]])
    rows = torch.zeros(17, 128), torch.zeros(17, 64), torch.zeros(17, 128)
    with pytest.raises(ValueError, match="16 slots"):
        view.store_tokens(0, torch.zeros(17, dtype=torch.long), torch.arange(17), *rows)


def test_cache_size_follows_the_memory_budget(model):
    from deepseek.model.indexer import sketch_supported

    per_block = PagedKVCache.bytes_per_block(model.config, 5, BLOCK, torch.bfloat16)
    # latent, k_pe and (FP8-exact) indexer keys in bf16, plus on CPU (where its kernel runs) the
    # keys' int8 sketch (int8 row, bf16 scale, fp32 residual)
    sketch = 128 + 2 + 4 if sketch_supported(128, "cpu") else 0
    assert per_block == 5 * BLOCK * ((128 + 64 + 128) * 2 + sketch)
    kv = PagedKVCache(model.config, 5, 3, BLOCK, torch.bfloat16)
    tensors = [*kv.latent, *kv.k_pe, *kv.index_k, *(t for s in kv.index_sketch or () for t in s)]
    assert sum(t.nbytes for t in tensors) == 3 * per_block
    assert PagedKVCache.bytes_per_block(model.config, 5, BLOCK, torch.bfloat16, "meta") == 5 * BLOCK * 320 * 2
    assert PagedKVCache.blocks_for_budget(model.config, 5, BLOCK, torch.bfloat16, 10 * per_block + 1) == 10
    with pytest.raises(ValueError, match="holds no block"):
        PagedKVCache.blocks_for_budget(model.config, 5, BLOCK, torch.bfloat16, per_block - 1)


SHARED = [5, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3]   # prompts draw a prefix of this, so they collide


class BlockManagerMachine(RuleBasedStateMachine):
    """Random steps, finishes, aborts and preemptions. A fake KV row per slot records which prefix
    (and salt) wrote it, so a reused block must hold exactly the prompt's own prefix."""

    def __init__(self):
        super().__init__()
        self.manager = BlockManager(num_blocks=12, block_size=4)
        self.rows: dict[int, tuple] = {}
        self.live: list[dict] = []   # {table, tokens, computed}

    def slot(self, table, pos):
        return table.blocks[pos // 4] * 4 + pos % 4

    @rule(head=st.integers(0, 16), tail=st.lists(st.integers(0, 3), max_size=6),
          salt=st.sampled_from([b"a", b"b"]))
    def admit(self, head, tail, salt):
        self.start(SHARED[:head] + tail or [0], salt)

    def start(self, tokens, salt):
        if not self.manager.can_allocate(tokens, salt):
            return False
        table = self.manager.allocate(tokens, salt)
        for pos in range(table.num_cached_tokens):
            assert self.rows[self.slot(table, pos)] == (salt, tuple(tokens[:pos + 1]))
        self.live.append({"table": table, "tokens": tokens, "computed": table.num_cached_tokens})
        return True

    @precondition(lambda self: self.live)
    @rule(data=st.data(), register=st.booleans())
    def forward(self, data, register):
        seq = data.draw(st.sampled_from(self.live))
        table, tokens = seq["table"], seq["tokens"]
        end = data.draw(st.integers(seq["computed"], table.num_tokens))
        for pos in range(seq["computed"], end):
            block = table.blocks[pos // 4]
            assert self.manager._refs[block] == 1 and self.manager._digest[block] is None, \
                "a forward pass writes into a shared or cached block"
            self.rows[self.slot(table, pos)] = (table.salt, tuple(tokens[:pos + 1]))
        seq["computed"] = end
        if register:
            self.manager.register(table, tokens, end)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), new=st.lists(st.integers(0, 3), min_size=1, max_size=5))
    def decode(self, data, new):
        seq = data.draw(st.sampled_from(self.live))
        if self.manager.can_append(seq["table"], len(new)):
            self.manager.append(seq["table"], len(new))
            seq["tokens"] = seq["tokens"] + new

    @precondition(lambda self: self.live)
    @rule(data=st.data(), resume=st.booleans())
    def finish_abort_or_preempt(self, data, resume):
        seq = data.draw(st.sampled_from(self.live))
        self.live.remove(seq)
        self.manager.free(seq["table"])
        if resume:   # preemption by recompute: the prompt is now everything generated so far
            self.start(seq["tokens"], seq["table"].salt)

    @invariant()
    def every_block_is_accounted_for(self):
        self.manager.check_integrity()

    def teardown(self):
        for seq in self.live:
            self.manager.free(seq["table"])
        self.manager.check_integrity()
        assert self.manager.num_free_blocks == 12 and self.manager.usage() == 0.0


BlockManagerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_block_manager_survives_any_mix_of_operations = BlockManagerMachine.TestCase
