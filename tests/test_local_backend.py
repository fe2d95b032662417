"""The in-process transformers backend on a tiny random Llama (and the embedded model)."""

import random

import pytest
import torch

from constitutional_ai.models import PromptTooLong, Sampling
from constitutional_ai.models.local import LocalBackend, embedded_model_dir


@pytest.fixture(scope="module")
def backend(tiny_model):
    return LocalBackend(tiny_model, batch_size=4)


def convs(n, prefix=""):
    return [[{"role": "user", "content": f"{prefix}question number {i} " + "word " * (i % 3)}] for i in range(n)]


def test_generation_depends_on_seed_not_on_batch(backend):
    sp = Sampling(max_new_tokens=12)
    c = convs(6)
    backend.batch_size = 4
    full = backend.generate(c, sp, seeds=list(range(6)))
    backend.batch_size = 1
    one_by_one = [backend.generate([x], sp, seeds=[s])[0] for x, s in zip(c, range(6))]
    backend.batch_size = 4
    reordered = backend.generate(c[::-1], sp, seeds=list(range(6))[::-1])[::-1]
    assert full == one_by_one == reordered
    assert len(set(full)) > 1
    assert backend.generate(c[:1], sp, seeds=[99]) != full[:1]  # another seed, another sample


def test_a_record_depends_only_on_its_own_seed_whatever_shares_its_batch(backend):
    sp = Sampling(max_new_tokens=10)
    target = convs(1, prefix="the record under test: ")[0]
    (alone,) = backend.generate([target], sp, seeds=[42])
    others = convs(7)
    for mates, seeds in ((others[:3], [1, 2, 3]), (others[3:], [9, 8, 7, 6]), (others[:1] * 3, [5, 5, 5])):
        got = backend.generate(mates + [target], sp, seeds=seeds + [42])
        assert got[-1] == alone


def chi_square(counts, probs):
    n = sum(counts)
    return sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, probs))


# Critical values of the chi-square distribution at p = 0.001 (1 and 3 degrees of freedom):
# a correct sampler fails these fixed-seed checks with probability 1e-3 per seed set.
CHI2_1DF, CHI2_3DF = 10.83, 16.27
DIST = [0.5, 0.25, 0.15, 0.1]


def draws(backend, sampling, n=6000, probs=DIST):
    logits = torch.tensor([probs] * n).log()
    return backend._sample(logits, sampling, [random.Random(s) for s in range(n)])


def test_sampler_follows_the_softmax_distribution(backend):
    got = draws(backend, Sampling(temperature=1.0))
    counts = [got.count(k) for k in range(4)]
    assert chi_square(counts, DIST) < CHI2_3DF
    # temperature 2 flattens the distribution to p ** (1/2), renormalised
    flat = [p**0.5 for p in DIST]
    flat = [p / sum(flat) for p in flat]
    got = draws(backend, Sampling(temperature=2.0))
    assert chi_square([got.count(k) for k in range(4)], flat) < CHI2_3DF
    # a row's draw depends on its own generator only: the same seeds give the same tokens in any batch
    logits = torch.tensor([DIST] * 5).log()
    once = backend._sample(logits, Sampling(), [random.Random(s) for s in range(5)])
    tail = backend._sample(logits[2:], Sampling(), [random.Random(s) for s in range(2, 5)])
    assert once[2:] == tail
    assert backend._sample(logits, Sampling(temperature=0.0), [random.Random(0)] * 5) == [0] * 5


CHI2_4DF = 18.47


def test_two_level_sampler_spans_blocks_and_never_picks_an_impossible_token(backend):
    # 1000 entries: not a multiple of the sampler's block, mass in four blocks, the rest impossible
    want = {3: 0.4, 255: 0.1, 256: 0.2, 700: 0.25, 999: 0.05}
    logits = torch.full((6000, 1000), float("-inf"))
    for k, p in want.items():
        logits[:, k] = torch.tensor(p).log() + 7.0  # an offset changes nothing
    got = backend._sample(logits, Sampling(), [random.Random(s) for s in range(6000)])
    assert set(got) <= set(want)
    assert chi_square([got.count(k) for k in want], list(want.values())) < CHI2_4DF


def test_sampler_honours_top_p(backend):
    # top_p 0.7 keeps the head reaching 0.7 (0.5 + 0.25, the crossing token included): 2/3, 1/3
    got = draws(backend, Sampling(top_p=0.7))
    assert set(got) == {0, 1}
    assert chi_square([got.count(0), got.count(1)], [2 / 3, 1 / 3]) < CHI2_1DF
    # a permuted vocabulary keeps the same tokens (truncation is by probability, not position)
    perm = [DIST[2], DIST[0], DIST[3], DIST[1]]
    assert set(draws(backend, Sampling(top_p=0.7), n=2000, probs=perm)) == {1, 3}
    assert set(draws(backend, Sampling(top_p=0.4), n=500)) == {0}


def test_shared_prefix_path_matches_left_padding(backend):
    c = convs(4, prefix="A long shared instruction that every prompt in the batch begins with. " * 8)
    sp = Sampling(max_new_tokens=10)
    shared = backend.generate(c, sp, seeds=[1, 2, 3, 4])
    reused = backend.prefix_cache.reused_tokens
    again = backend.generate(c[::-1], sp, seeds=[4, 3, 2, 1])[::-1]  # the prefix now comes from the cache
    assert backend.prefix_cache.reused_tokens - reused > 64
    backend.min_shared_prefix_generate = 10**9
    try:
        plain = backend.generate(c, sp, seeds=[1, 2, 3, 4])
    finally:
        backend.min_shared_prefix_generate = 16
    assert shared == plain == again


def test_batch_of_one_starts_from_what_the_whole_call_shares(backend):
    """At batch 1 the prefix every prompt of the call shares is encoded once, not per prompt."""
    c = convs(5, prefix="Every prompt of this call opens with the same long instruction. " * 4)
    sp = Sampling(max_new_tokens=8)
    backend.batch_size = 4
    batched = backend.generate(c, sp, seeds=list(range(5)))
    backend.batch_size = 1
    backend.prefix_cache.clear()
    backend.prefix_cache.reused_tokens = backend.prefix_cache.encoded_tokens = 0
    try:
        one = backend.generate(c, sp, seeds=list(range(5)))
        pc = backend.prefix_cache
        shared = min(len(backend.tokenizer(backend.render(x)).input_ids) for x in c)
        assert 40 < pc.encoded_tokens < shared  # the common prefix, once
        assert pc.reused_tokens == 4 * pc.encoded_tokens  # then taken from the cache by the other 4
        backend.min_shared_prefix_generate = 10**9  # the whole prompt encoded per prompt
        plain = backend.generate(c, sp, seeds=list(range(5)))
    finally:
        backend.batch_size, backend.min_shared_prefix_generate = 4, 16
    assert one == batched == plain


def test_stop_strings_cut_the_text(backend):
    # A seeded sample is fixed; stopping at a string inside it must cut the text there.
    (full,) = backend.generate(convs(1), Sampling(max_new_tokens=12), seeds=[5])
    assert len(full) > 6
    stop = full[4:6]
    (cut,) = backend.generate(convs(1), Sampling(max_new_tokens=12, stop=(stop,)), seeds=[5])
    assert cut == full[: full.find(stop)].strip()


@torch.inference_mode()
def naive_scores(b, prompts, options):
    out = []
    for p in prompts:
        ids = b.tokenizer(p, add_special_tokens=False).input_ids
        row = []
        for o in options:
            full = b.tokenizer(p + o, add_special_tokens=False).input_ids
            lp = b.model(input_ids=torch.tensor([full])).logits[0].float().log_softmax(-1)
            row.append(float(sum(lp[k - 1, full[k]] for k in range(len(ids), len(full)))))
        out.append(row)
    return out


@pytest.mark.parametrize("options", [["A", "B"], [" yes", " no thanks"]])
def test_score_choices_equals_naive_with_and_without_prefix_reuse(backend, options):
    shared = "Consider the following conversation between a human and an assistant. " * 6
    prompts = [
        backend.render(
            [
                {"role": "user", "content": shared + f"(A) first {i} (B) second"},
                {"role": "assistant", "content": "The answer is: ("},
            ]
        )
        for i in range(5)
    ]
    prompts.append(backend.render([{"role": "user", "content": "short"}]))
    ref = naive_scores(backend, prompts, options)
    flat = lambda rows: [x for r in rows for x in r]  # noqa: E731
    got = backend.score_choices(prompts, options)
    assert flat(got) == pytest.approx(flat(ref), abs=1e-4)
    backend.min_shared_prefix = 10**9
    try:
        assert flat(backend.score_choices(prompts, options)) == pytest.approx(flat(ref), abs=1e-4)
    finally:
        backend.min_shared_prefix = 64


def test_prefix_cache_reuses_blocks_across_calls_with_naive_probabilities(tiny_model):
    b = LocalBackend(tiny_model, batch_size=4)
    block = "Here are worked examples of the task. " * 12
    prompts = [
        b.render(
            [
                {"role": "user", "content": block + f"question {i}: (A) yes (B) no"},
                {"role": "assistant", "content": "The answer is: ("},
            ]
        )
        for i in range(6)
    ]
    ref = naive_scores(b, prompts, ["A", "B"])
    first = b.score_choices(prompts[:2], ["A", "B"])
    assert b.prefix_cache.reused_tokens == 0 and b.prefix_cache.entries
    block_len = b.count_tokens(b.render([{"role": "user", "content": block}]))
    encoded = b.prefix_cache.encoded_tokens
    later = b.score_choices(prompts[2:], ["A", "B"])  # another call: the block comes from the cache
    assert b.prefix_cache.reused_tokens >= block_len - 10
    assert b.prefix_cache.encoded_tokens - encoded < 20  # only what follows the block ran again
    flat = lambda rows: [x for r in rows for x in r]  # noqa: E731
    assert flat(first + later) == pytest.approx(flat(ref), abs=1e-4)
    assert b.prefix_cache.bytes <= b.prefix_cache.max_bytes


def test_prefix_cache_is_bounded_and_can_be_switched_off(tiny_model):
    from constitutional_ai.models.local import PrefixKVCache

    kv = lambda n: [(torch.zeros(1, 1, n, 4), torch.zeros(1, 1, n, 4))]  # noqa: E731  32 bytes per token
    c = PrefixKVCache(max_bytes=32 * 25)
    c.put([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], kv(10))
    c.put([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], kv(12))  # extends the first: replaces it
    assert list(c.entries) == [tuple(range(1, 13))] and c.bytes == 32 * 12
    n, got = c.lookup([1, 2, 3, 99])
    assert n == 3 and got[0][0].shape == (1, 1, 3, 4)
    c.put(list(range(50, 60)), kv(10))
    c.put(list(range(70, 80)), kv(10))  # over 25 tokens' worth: the least recently used goes
    assert tuple(range(1, 13)) not in c.entries and c.bytes <= c.max_bytes
    assert c.lookup([5, 6]) == (0, [])
    off = LocalBackend(tiny_model, prefix_cache_mb=0)
    prompts = [off.render([{"role": "user", "content": "word " * 80 + str(i)}]) for i in range(3)]
    got, ref = off.score_choices(prompts, ["A", "B"]), naive_scores(off, prompts, ["A", "B"])
    assert [x for r in got for x in r] == pytest.approx([x for r in ref for x in r], abs=1e-4)
    assert not off.prefix_cache.entries


def test_prefill_rendering_continues_the_assistant_turn(backend):
    text = backend.render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The answer is: ("}])
    assert text.endswith("The answer is: (")


def test_too_long_prompt_policy(tiny_model):
    strict = LocalBackend(tiny_model)
    long_conv = []
    for i in range(40):
        long_conv += [
            {"role": "user", "content": f"turn {i} " + "filler " * 20},
            {"role": "assistant", "content": "ok " * 20},
        ]
    long_conv.append({"role": "user", "content": "final question"})
    sp = Sampling(max_new_tokens=8)
    with pytest.raises(PromptTooLong, match=r"prompt #1 has \d+ tokens but the model accepts at most 2040"):
        strict.generate([convs(1)[0], long_conv], sp)
    lenient = LocalBackend(tiny_model, truncation="left")
    kept = lenient._encode_conversation(0, long_conv, 2040)
    assert len(kept) <= 2040
    text = lenient.tokenizer.decode(kept)
    assert "final question" in text and "turn 0 " not in text
    assert len(lenient.generate([long_conv], sp)) == 1
    with pytest.raises(ValueError, match="truncation"):
        LocalBackend(tiny_model, truncation="middle")


@pytest.mark.slow
def test_embedded_model_is_cached_and_fast_to_reload():
    path = embedded_model_dir()
    assert (path / "config.json").exists() and list(path.glob("*.safetensors"))
    stamp = (path / "config.json").stat().st_mtime_ns
    b = LocalBackend("default")
    # loaded from the converted folder, which was not converted again
    assert b.path == str(path) and (path / "config.json").stat().st_mtime_ns == stamp
    assert b.name == "SmolLM2-135M-Instruct"
    (reply,) = b.generate(
        [[{"role": "user", "content": "What is the capital of France?"}]], Sampling(max_new_tokens=16, temperature=0)
    )
    assert "Paris" in reply


def test_unloadable_model_is_a_clear_error(tmp_path):
    from constitutional_ai.models import BackendError

    with pytest.raises(BackendError, match=r"(?s)cannot load model .*--model takes 'default'"):
        LocalBackend(str(tmp_path / "no-such-checkpoint"))
