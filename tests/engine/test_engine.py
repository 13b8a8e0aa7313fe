"""The engine: continuous batching, chunked prefill, prefix caching, preemption and aborts.

Runs the fp32 tiny model (index_topk 64) so prompts cross the sparse-attention boundary.
"""

from __future__ import annotations

import random
from collections import defaultdict

import pytest
import torch

from deepseek.engine.request import Request
from deepseek.engine.sampler import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)


def prompts(n, seed=0, low=20, high=150):
    rng = random.Random(seed)
    return [tuple([0] + [rng.randrange(2, 1024) for _ in range(rng.randrange(low, high))]) for _ in range(n)]


def run(engine, requests, check_every_step=False):
    """Drive the engine until every request finishes; returns {request_id: (tokens, text, last output)}."""
    for r in requests:
        engine.add_request(r)
    out, last = defaultdict(lambda: ([], [])), {}
    while engine.has_unfinished():
        for o in engine.step():
            out[o.request_id][0].extend(o.token_ids)
            out[o.request_id][1].append(o.text)
            last[o.request_id] = o
        if check_every_step:
            engine.check_integrity()
    return {k: (tuple(v[0]), "".join(v[1]), last[k]) for k, v in out.items()}


def assert_all_blocks_free(engine):
    engine.check_integrity()
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    assert not engine.scheduler.running and not engine.scheduler.waiting and not engine.seqs


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_batched_greedy_outputs_equal_each_request_alone(make_engine, sparse):
    ps = prompts(6)
    together = make_engine(max_num_batched_tokens=48)     # long prompts are prefilled in chunks
    requests = [Request(f"r{i}", p, GREEDY, sparse=sparse) for i, p in enumerate(ps)]
    batched = run(together, requests, check_every_step=True)
    assert_all_blocks_free(together)
    for r in requests:
        alone = run(make_engine(max_num_batched_tokens=4096), [r])
        assert batched[r.request_id][0] == alone[r.request_id][0], r.request_id
        assert batched[r.request_id][2].finish_reason == "length"


@pytest.mark.slow
def test_compiled_decode_gives_the_eager_outputs(make_engine):
    """EngineConfig(compile=True): torch.compile'd dense decode steps (one graph for batch >= 2, one
    for batch 1). The requests end at different steps, so the batch shrinks 4 -> 2 -> 1: after its
    first call, each shape class runs on only the guards that tell the graphs apart."""
    lengths = (6, 6, 12, 20)
    requests = lambda: [Request(f"r{i}", p, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True), sparse=False)
                        for i, (p, n) in enumerate(zip(prompts(4, seed=5), lengths))]
    eager, compiled = make_engine(), make_engine(compile=True)
    eager.warm_up()                             # what `deepseek serve --compile` does at start-up
    assert_all_blocks_free(eager)
    expected = run(eager, requests())
    got = run(compiled, requests())
    assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in expected.items()}
    assert [len(v[0]) for v in got.values()] == list(lengths)
    threads = torch.get_num_threads()
    assert compiled.runner._guarded == {(False, False, threads), (True, False, threads)}
    assert_all_blocks_free(compiled)
    again = run(compiled, requests())           # every class now skips the full guard check
    assert {k: v[0] for k, v in again.items()} == {k: v[0] for k, v in expected.items()}
    other = 2 if threads == 1 else 1    # inductor's kernels specialize on the thread count: a new class
    torch.set_num_threads(other)
    try:
        moved = run(compiled, requests())
    finally:
        torch.set_num_threads(threads)
    assert {k: v[0] for k, v in moved.items()} == {k: v[0] for k, v in expected.items()}
    assert (False, False, other) in compiled.runner._guarded


def test_sparse_and_dense_agree_below_index_topk_and_differ_above(make_engine):
    short, long = prompts(1, seed=1, low=20, high=21)[0], prompts(1, seed=2, low=120, high=121)[0]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    res = run(make_engine(), [Request("s-short", short, params, sparse=True),
                              Request("d-short", short, params, sparse=False),
                              Request("s-long", long, params, sparse=True),
                              Request("d-long", long, params, sparse=False)])
    assert res["s-short"][0] == res["d-short"][0]
    assert res["s-long"][0] != res["d-long"][0]
    s, d = res["s-long"][2].sparse, res["d-long"][2].sparse
    assert (s.mode, s.index_topk, s.attended_tokens) == ("sparse", 64, 64)
    assert d.mode == "dense" and d.index_topk is None and d.attended_tokens > 120
    assert s.context_tokens == d.context_tokens == len(long) + 10


def test_prefix_cache_hit_gives_the_cold_output_and_reports_the_hit(make_engine):
    base = prompts(1, seed=3, low=100, high=101)[0]
    follow_up = base[:90] + (5, 6, 7, 8, 9)
    engine = make_engine(block_size=16)
    run(engine, [Request("first", base, GREEDY)])
    warm = run(engine, [Request("second", follow_up, GREEDY)])["second"]
    cold = run(make_engine(block_size=16), [Request("cold", follow_up, GREEDY)])["cold"]
    assert warm[0] == cold[0]
    assert warm[2].cached_prompt_tokens == 80          # 5 full blocks of the 90 shared tokens
    assert cold[2].cached_prompt_tokens == 0
    assert warm[2].prompt_tokens == len(follow_up)
    assert_all_blocks_free(engine)


def test_two_tenants_never_share_blocks(make_engine):
    prompt = prompts(1, seed=4, low=80, high=81)[0]
    engine = make_engine()
    a = Request("a", prompt, GREEDY, salt=b"tenant-a")
    b = Request("b", prompt, GREEDY, salt=b"tenant-b")
    engine.add_request(a)
    engine.add_request(b)
    engine.step()
    blocks_a, blocks_b = engine.seqs["a"].table.blocks, engine.seqs["b"].table.blocks
    assert not set(blocks_a) & set(blocks_b)
    first = run(engine, [])
    again = run(engine, [Request("a2", prompt, GREEDY, salt=b"tenant-a"),
                         Request("c", prompt, GREEDY, salt=b"tenant-c")])
    assert again["a2"][2].cached_prompt_tokens == 80 and again["c"][2].cached_prompt_tokens == 0
    assert first["a"][0][-20:] == first["b"][0][-20:] and again["a2"][0] == again["c"][0]


def test_preemption_under_a_small_cache_keeps_outputs_and_frees_everything(make_engine):
    ps = prompts(5, seed=5, low=40, high=60)
    requests = [Request(f"p{i}", p, GREEDY) for i, p in enumerate(ps)]
    from deepseek.model.indexer import sketch_supported

    # 12 blocks: fp32 latent and k_pe, bf16 indexer keys and (where its kernel runs) their int8
    # sketch (row, scale, residual)
    sketch = 128 + 2 + 4 if sketch_supported(128, "cpu") else 0
    small = make_engine(block_size=16, cache_bytes=12 * 16 * 5 * ((128 + 64) * 4 + 128 * 2 + sketch))
    assert small.blocks.num_blocks == 12
    squeezed = run(small, requests, check_every_step=True)
    assert small.scheduler.num_preemptions > 0
    assert_all_blocks_free(small)
    roomy = run(make_engine(), requests)
    for r in requests:
        assert squeezed[r.request_id][0] == roomy[r.request_id][0]


def test_abort_mid_stream_and_in_queue_frees_blocks(make_engine):
    engine = make_engine(max_num_seqs=2)
    for i, p in enumerate(prompts(4, seed=6)):
        engine.add_request(Request(f"q{i}", p, GREEDY))
    for _ in range(5):
        engine.step()
    assert engine.num_running == 2 and engine.num_waiting == 2
    aborted = engine.abort("q0")
    assert aborted.finished and aborted.finish_reason == "abort"
    assert engine.abort("q3").finish_reason == "abort"      # still waiting
    assert engine.abort("q3") is None and engine.abort("nope") is None
    engine.check_integrity()
    run(engine, [])
    assert_all_blocks_free(engine)


def test_same_seed_gives_the_same_text(make_engine):
    p = prompts(1, seed=7)[0]
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=25, ignore_eos=True)
    companion = Request("x", prompts(1, seed=8)[0], params)
    a = run(make_engine(), [Request("a", p, params), companion])["a"]
    b = run(make_engine(), [Request("a", p, params), companion])["a"]
    c = run(make_engine(), [Request("c", p, SamplingParams(temperature=1.0, top_p=0.9, seed=99,
                                                           max_tokens=25, ignore_eos=True))])["c"]
    assert a[0] == b[0] and a[1] == b[1]
    assert a[0] != c[0]


def test_a_seeded_request_is_batch_invariant_in_bf16(tiny_config, tiny_tokenizer):
    """bf16 (the serving dtype) GEMMs give each row the same bits whatever the batch size, so a
    seeded request reads the same alone or beside others. (fp32 CPU GEMMs do not: row results
    change with M, so fp32 only promises the same text for the same batch.)"""
    from deepseek.engine.engine import EngineConfig, LLMEngine
    from deepseek.model import Transformer
    from deepseek.model.checkpoint import init_random_weights

    model = init_random_weights(Transformer(tiny_config, dtype=torch.bfloat16), seed=0).eval().requires_grad_(False)
    params = SamplingParams(temperature=1.0, seed=77, max_tokens=25, ignore_eos=True)
    p = prompts(1, seed=7)[0]
    alone = run(LLMEngine(model, tiny_tokenizer, EngineConfig()), [Request("a", p, params)])["a"]
    others = [Request(f"o{i}", q, SamplingParams(temperature=1.0, max_tokens=30, ignore_eos=True))
              for i, q in enumerate(prompts(3, seed=11))]
    crowded = run(LLMEngine(model, tiny_tokenizer, EngineConfig()), [Request("a", p, params), *others])["a"]
    assert crowded[0] == alone[0] and crowded[1] == alone[1]


def test_stop_strings_never_leak_into_the_output(make_engine, tiny_tokenizer):
    p = prompts(1, seed=9)[0]
    free = run(make_engine(), [Request("free", p, GREEDY)])["free"]
    text = free[1]
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert len(stop) == 3
    res = run(make_engine(), [Request("stopped", p, SamplingParams(temperature=0, max_tokens=30,
                                                                   ignore_eos=True, stop=(stop,)))])
    tokens, out, last = res["stopped"]
    assert last.finish_reason == "stop"
    assert stop not in out and out == text[:text.index(stop)]


def test_max_tokens_and_eos_finish_reasons(make_engine, tiny_model):
    p = prompts(1, seed=10)[0]
    res = run(make_engine(), [Request("len", p, SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))])
    assert res["len"][2].finish_reason == "length" and len(res["len"][0]) == 3
    first = res["len"][0][0]
    stopped = run(make_engine(), [Request("tok", p, SamplingParams(temperature=0, max_tokens=3,
                                                                   stop_token_ids=(first,)))])["tok"]
    assert stopped[2].finish_reason == "stop" and stopped[0] == (first,) and stopped[1] == ""


@pytest.mark.parametrize("bad, message", [
    (Request("e", (), GREEDY), "empty"),
    (Request("big", tuple(range(2000)), GREEDY), "context"),
    (Request("oov", (0, 5000), GREEDY), "vocab"),
])
def test_requests_that_can_never_run_are_refused(make_engine, bad, message):
    engine = make_engine()
    with pytest.raises(ValueError, match=message):
        engine.add_request(bad)
    assert_all_blocks_free(engine)


def test_duplicate_request_ids_are_refused(make_engine):
    engine = make_engine()
    engine.add_request(Request("same", (0, 5, 6), GREEDY))
    with pytest.raises(ValueError, match="duplicate"):
        engine.add_request(Request("same", (0, 5, 6), GREEDY))


def test_offline_interface_is_importable_from_the_package(tiny_checkpoint):
    """`from deepseek.engine import LLM, SamplingParams` is the documented offline entry point."""
    from deepseek.engine import LLM, SamplingParams as Params

    llm = LLM(tiny_checkpoint, dtype=torch.float32)
    [out] = llm.generate(["hello"], Params(temperature=0, max_tokens=4))
    assert out.completion_tokens == 4 and out.finish_reason == "length"
    with pytest.raises(AttributeError):
        import deepseek.engine
        deepseek.engine.NoSuchThing


def test_an_llm_leaves_its_start_up_heap_out_of_the_collectors_passes(tiny_checkpoint):
    """`freeze_startup_heap`: the model and tokenizer are never walked by a full collection."""
    import gc

    from deepseek.engine import LLM

    gc.unfreeze()
    llm = LLM(tiny_checkpoint, dtype=torch.float32)
    assert gc.get_freeze_count() > 0
    assert all(o is not llm.engine for o in gc.get_objects())      # frozen objects are not listed


def test_keep_freed_memory_stops_large_blocks_from_faulting_in_again():
    """`keep_freed_memory` (glibc): two 20 MB buffers freed each round are kept for the next. The
    control pins glibc's mmap threshold at its initial 128 KB (it otherwise adapts, depending on the
    heap's history): then both buffers are mapped afresh each round and fault all their pages in.
    Measured in a fresh process: the setting is process-wide."""
    import subprocess
    import sys

    code = """
import ctypes, resource, sys, torch
from deepseek.engine.engine import keep_freed_memory
def faults(rounds):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        a = torch.empty(20 << 20, dtype=torch.uint8).fill_(1)
        b = torch.empty(20 << 20, dtype=torch.uint8).fill_(1)
        del b, a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
try:
    ctypes.CDLL("libc.so.6").mallopt(-3, 128 << 10)       # M_MMAP_THRESHOLD, glibc's initial value
except (OSError, AttributeError):
    print("unsupported"); sys.exit()
faults(1)
before = faults(8)
if not keep_freed_memory():
    print("unsupported"); sys.exit()
faults(3)
print(before, faults(8))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    if out == ["unsupported"]:
        pytest.skip("no glibc mallopt here")
    before, after = map(int, out)
    round_pages = 2 * (20 << 20) // 4096
    assert before >= 6 * round_pages     # mapped afresh: (nearly) every round faults both buffers in
    assert after < 2 * round_pages       # kept: the same memory serves (nearly) every round
