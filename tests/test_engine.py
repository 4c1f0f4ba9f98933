"""The local generation engine on a tiny random Llama with the real SmolLM2 tokenizer and chat template."""

from __future__ import annotations

import time

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tunewise.errors import TunewiseError  # noqa: E402
from tunewise.evaluate.engine import LocalEngine, SamplingParams, _sample_seed  # noqa: E402

MAX_NEW = 8
SYSTEM = "You classify banking messages into exactly one intent. Reply with the intent name only."
USERS = [
    "Where is my card?",
    "I was charged twice for the same coffee, please refund me",
    "hi",
    "My top up by bank transfer had a fee, why?",
    "Declined transfer again!",
    "A refund is not showing up in my statement after two weeks of waiting",
]
CHATS = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": u}] for u in USERS]


def _reference(model, ids: list[int], stop: list[int], pad: int, max_new: int = MAX_NEW) -> list[int]:
    """What a plain per-example `model.generate` produces, greedy."""
    x = torch.tensor([ids])
    out = model.generate(
        input_ids=x,
        attention_mask=torch.ones_like(x),
        max_new_tokens=max_new,
        do_sample=False,
        eos_token_id=stop,
        pad_token_id=pad,
    )
    return out[0, len(ids) :].tolist()


@pytest.fixture(scope="module")
def stop_setup(tiny):
    """A stop token the random model actually emits mid-way for one prompt, so rows finish at different steps."""
    model, tokenizer = tiny
    engine = LocalEngine(model, tokenizer)
    first = _reference(model, engine.encode(CHATS[0]), sorted(engine.stop_token_ids), engine.pad_token_id)
    stop = sorted(engine.stop_token_ids | {first[2]})
    references = [_reference(model, engine.encode(c), stop, engine.pad_token_id) for c in CHATS]
    return stop, references


def test_chat_template_and_stop_tokens(tiny):
    model, tokenizer = tiny
    engine = LocalEngine(model, tokenizer)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in engine.stop_token_ids and engine.pad_token_id == im_end  # SmolLM2: pad == eos == im_end
    text = tokenizer.decode(engine.encode(CHATS[0]))
    assert text.startswith("<|im_start|>system\n" + SYSTEM) and text.endswith("<|im_start|>assistant\n")
    assert engine.encode(engine.encode(CHATS[0])) == engine.encode(CHATS[0])  # token ids pass through


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("batch_size", [3, 32])
def test_batched_greedy_equals_per_example_generate(tiny, stop_setup, share_prefix, batch_size):
    model, tokenizer = tiny
    stop, references = stop_setup
    engine = LocalEngine(
        model,
        tokenizer,
        max_batch_size=batch_size,
        min_shared_prefix=16 if share_prefix else 10_000,
        stop_token_ids=stop,
    )
    gens = engine.generate(CHATS, max_new_tokens=MAX_NEW)
    assert [list(g.token_ids) for g in gens] == references
    # Rows finished at different steps: at least one stopped early and one ran to the limit.
    reasons = {g.finish_reason for g in gens}
    assert reasons == {"stop", "length"}
    for chat, g, ref in zip(CHATS, gens, references, strict=True):
        assert g.prompt_tokens == len(engine.encode(chat))
        assert g.completion_tokens == len(ref)
        body = ref[:-1] if g.finish_reason == "stop" else ref
        assert g.text == tokenizer.decode(body, skip_special_tokens=True)
        assert (g.finish_reason == "stop") == (ref[-1] in stop)


def test_shared_prefix_is_detected(tiny):
    model, tokenizer = tiny
    engine = LocalEngine(model, tokenizer)
    ids = [engine.encode(c) for c in CHATS]
    n, cache, _ = engine._shared_prefix(ids)
    # The system block is common to all prompts; the user turn starts where they differ.
    common = tokenizer.decode(ids[0][:n])
    assert common.startswith("<|im_start|>system\n" + SYSTEM) and "Where" not in common
    assert cache is not None and cache.get_seq_length() == n
    assert engine._shared_prefix(ids[:1])[0] == 0  # one prompt: nothing to share


def test_latency_is_shared_out_of_measured_time(tiny):
    model, tokenizer = tiny
    engine = LocalEngine(model, tokenizer, max_batch_size=2)
    start = time.perf_counter()
    gens = engine.generate(CHATS, max_new_tokens=4)
    wall_ms = (time.perf_counter() - start) * 1000
    assert all(g.latency_ms > 0 for g in gens)
    # The shares never exceed the time actually spent (tokenizing and decoding text are not attributed).
    assert sum(g.latency_ms for g in gens) <= wall_ms


def test_sampling_is_seeded(tiny):
    model, tokenizer = tiny
    engine = LocalEngine(model, tokenizer)
    a = engine.sample(CHATS[:3], n=3, temperature=1.0, seed=1, max_new_tokens=6)
    b = engine.sample(CHATS[:3], n=3, temperature=1.0, seed=1, max_new_tokens=6)
    c = engine.sample(CHATS[:3], n=3, temperature=1.0, seed=2, max_new_tokens=6)
    assert [len(x) for x in a] == [3, 3, 3]
    ids = lambda runs: [[g.token_ids for g in per] for per in runs]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    # Samples of one prompt differ from each other (the wide random model is far from deterministic).
    assert len({g.token_ids for g in a[0]}) > 1


@pytest.mark.parametrize("compact_fraction", [0.0, 1.0])
def test_finished_rows_kept_or_dropped_give_the_same_outputs(tiny, stop_setup, compact_fraction):
    """Finished rows are dropped from the batch and cache at once (0.0) or kept until the batch ends (1.0)."""
    model, tokenizer = tiny
    stop, references = stop_setup
    engine = LocalEngine(model, tokenizer, stop_token_ids=stop)
    engine._compact_fraction = compact_fraction
    gens = engine.generate(CHATS, max_new_tokens=MAX_NEW)
    assert [list(g.token_ids) for g in gens] == references
    assert {g.finish_reason for g in gens} == {"stop", "length"}


def test_sample_prefills_each_prompt_once_with_the_same_samples(tiny):
    """sample() runs each prompt's prefill once and copies it to its n rows; the seeded samples are the ones
    a prefill per row gives (rows keep their order, so the generator's draws line up)."""
    model, tokenizer = tiny
    engine = LocalEngine(model, tokenizer)
    prefill_rows = []

    def record(module, args, kwargs):
        x = kwargs["input_ids"]
        if (
            x.shape[1] > 1
        ):  # the shared prefix (one row) and the prompts' prefills; decode steps feed one token
            prefill_rows.append(x.shape[0])

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        merged = engine.sample(CHATS[:4], n=3, temperature=1.0, seed=3, max_new_tokens=6)
        assert prefill_rows == [1, 4]
        prefill_rows.clear()
        engine._merge_duplicates = False
        per_row = engine.sample(CHATS[:4], n=3, temperature=1.0, seed=3, max_new_tokens=6)
        assert prefill_rows == [1, 12]
    finally:
        handle.remove()
    assert [[g.token_ids for g in per] for per in merged] == [[g.token_ids for g in per] for per in per_row]
    # Every sample is charged a share (its prompt's prefill share is split among its n samples).
    assert all(g.latency_ms > 0 for per in merged for g in per)


def test_bad_arguments_are_user_errors(tiny):
    model, tokenizer = tiny
    engine = LocalEngine(model, tokenizer)
    with pytest.raises(TunewiseError):
        engine.generate(CHATS, max_new_tokens=0)
    with pytest.raises(TunewiseError):
        engine.sample(CHATS, n=2, temperature=0)
    with pytest.raises(TunewiseError):
        engine.generate([[]])
    assert engine.generate([]) == []


@pytest.mark.embedded
def test_embedded_model_batched_equals_per_example(shared_datasets):
    """The real SmolLM2-135M (fp32): batched greedy with the shared system prefix equals per-example generate.

    The tiny model cannot show it: near-ties between a trained model's top tokens are where batching's
    different summation order could flip an argmax. (bench/generation.py checks 100 prompts.)
    """
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunewise.models.embedded import model_dir

    try:
        folder = model_dir()
    except TunewiseError as exc:
        pytest.skip(f"the embedded model is unavailable: {exc.message}")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    lines = (shared_datasets / "banking77" / "test-small.jsonl").read_text().splitlines()
    users = [json.loads(line)["messages"][0] for line in lines[::25]]  # 4 prompts from different intents
    system = {
        "role": "system",
        "content": "Classify the customer's banking message. Reply with the intent only.",
    }
    chats = [[system, u] for u in users]
    engine = LocalEngine(model, tokenizer, max_batch_size=3)  # two batches: 3 rows, then 1
    assert engine._shared_prefix([engine.encode(c) for c in chats])[0] >= engine.min_shared_prefix
    gens = engine.generate(chats, max_new_tokens=10)
    stop = sorted(engine.stop_token_ids)
    with torch.inference_mode():
        for chat, g in zip(chats, gens, strict=True):
            ids = engine.encode(chat)
            assert list(g.token_ids) == _reference(model, ids, stop, engine.pad_token_id, 10)
    # A trained model answers in words, not in the random model's noise.
    assert all(g.text.strip() for g in gens)


def _prefill_rows(model):
    """Record the rows of every forward that feeds more than one token (the prefix and the prompts' prefills),
    and count the decode forwards (one token per row)."""
    seen = {"prefill": [], "decode": 0}

    def record(module, args, kwargs):
        x = kwargs["input_ids"]
        if x.shape[1] > 1:
            seen["prefill"].append(x.shape[0])
        else:
            seen["decode"] += 1

    return seen, model.register_forward_pre_hook(record, with_kwargs=True)


@pytest.mark.parametrize("slack", [None, 1])
def test_continuous_batching_refills_slots_with_the_same_outputs(tiny, stop_setup, slack):
    """Two rows at a time for six prompts: a finished row takes the next prompt at once (prefilled alone), the
    outputs are per-example generate's, and fewer decode steps run than with static batches. Slack 1 makes the
    cache drop its unread columns at almost every step."""
    model, tokenizer = tiny
    stop, references = stop_setup
    static = LocalEngine(model, tokenizer, max_batch_size=2, stop_token_ids=stop)
    static.continuous = False
    engine = LocalEngine(model, tokenizer, max_batch_size=2, stop_token_ids=stop)
    engine._column_slack = slack
    assert [list(g.token_ids) for g in engine.generate(CHATS, max_new_tokens=MAX_NEW)] == references
    # Longest prompt first: 5 (2 tokens), 1 (8), 3 (2), 0 (3: it meets the stop token), 4 (2), 2 (8). Static
    # batches of two run 7 + 2 + 7 decode forwards. Refilled, a prompt's first token comes from its prefill in
    # the step its slot freed: one slot runs 5 (steps 1-2), 3 (2-3), 0 (3-5), 4 (5-6), 2 (6-13) while the other
    # runs 1 (1-8): 13 steps, 12 forwards.
    params = [SamplingParams(max_new_tokens=k) for k in (8, 8, 8, 2, 2, 2)]
    seen, handle = _prefill_rows(model)
    try:
        before = static.generate(CHATS, params=params)
        static_seen = {"prefill": list(seen["prefill"]), "decode": seen["decode"]}
        seen["prefill"].clear()
        seen["decode"] = 0
        gens = engine.generate(CHATS, params=params)
    finally:
        handle.remove()
    assert [g.token_ids for g in gens] == [g.token_ids for g in before]
    assert [g.finish_reason for g in gens] == [g.finish_reason for g in before]
    assert static_seen["prefill"] == [1, 2, 2, 2]  # the shared prefix, then three static batches
    # The shared prefix, the first two prompts, then one prompt per refill: each prompt prefilled once.
    assert seen["prefill"] == [1, 2, 1, 1, 1, 1]
    assert (static_seen["decode"], seen["decode"]) == (16, 12)
    assert all(g.latency_ms > 0 for g in gens)


def test_greedy_and_samples_share_one_prefill(tiny):
    """generate_with_samples(): the greedy answers are generate()'s, each prompt is prefilled once for its
    greedy row and its n samples, and the samples are seeded (same seed, same samples; another seed, others)."""
    model, tokenizer = tiny
    engine = LocalEngine(model, tokenizer)
    greedy = engine.generate(CHATS[:4], max_new_tokens=6)
    seen, handle = _prefill_rows(model)
    try:
        answers, samples = engine.generate_with_samples(
            CHATS[:4], 3, temperature=1.0, seed=5, max_new_tokens=6
        )
        assert seen["prefill"] == [1, 4]  # the shared prefix, then 4 prompts for 16 rows
        seen["prefill"].clear()
        engine.one_prefill = False
        two_calls = engine.generate_with_samples(CHATS[:4], 3, temperature=1.0, seed=5, max_new_tokens=6)
        assert seen["prefill"] == [1, 4, 1, 4]  # greedy, then the samples: each prompt prefilled twice
    finally:
        handle.remove()
    engine.one_prefill = True
    assert (
        [g.token_ids for g in answers] == [g.token_ids for g in greedy] == [g.token_ids for g in two_calls[0]]
    )
    assert [len(s) for s in samples] == [3, 3, 3, 3]
    again = engine.generate_with_samples(CHATS[:4], 3, temperature=1.0, seed=5, max_new_tokens=6)[1]
    other = engine.generate_with_samples(CHATS[:4], 3, temperature=1.0, seed=6, max_new_tokens=6)[1]
    ids = lambda runs: [[g.token_ids for g in per] for per in runs]  # noqa: E731
    assert ids(samples) == ids(again) and ids(samples) != ids(other)
    assert len({g.token_ids for g in samples[0]}) > 1  # a prompt's samples differ from each other
    # A sample does not depend on its batch: alone, prompt 2's samples are the same.
    alone = engine.generate(
        [CHATS[2]] * 3,
        params=[
            SamplingParams(max_new_tokens=6, temperature=1.0, seed=_sample_seed(5, 2, j)) for j in (1, 2, 3)
        ],
    )
    assert [g.token_ids for g in alone] == [g.token_ids for g in samples[2]]
    assert engine.generate_with_samples(CHATS[:2], 1, max_new_tokens=6)[1] == [[], []]  # n < 2: no samples


@pytest.mark.embedded
def test_embedded_model_levers_keep_greedy_outputs(shared_datasets):
    """The real SmolLM2-135M (fp32) on restaurant8k prompts: continuous batching with slots refilled, the
    greedy row decoded beside the consistency samples from one prefill, and a free and a constrained arm
    answered together, give the static engine's greedy answers (and each arm's own) token for token."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunewise.models.embedded import model_dir

    try:
        folder = model_dir()
    except TunewiseError as exc:
        pytest.skip(f"the embedded model is unavailable: {exc.message}")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    lines = (shared_datasets / "restaurant8k" / "test-small.jsonl").read_text().splitlines()[:4]
    system = {
        "role": "system",
        "content": "Extract the booking slots from the message as one line of JSON "
        '(keys among "date", "time", "people", "first_name", "last_name").',
    }
    chats = [[system, *[m for m in json.loads(line)["messages"] if m["role"] == "user"]] for line in lines]
    static = LocalEngine(model, tokenizer, max_batch_size=4)
    static.continuous = False
    reference = static.generate(chats, max_new_tokens=24, json_guard=True)
    engine = LocalEngine(model, tokenizer, max_batch_size=4)
    answers, samples = engine.generate_with_samples(chats, 2, seed=0, max_new_tokens=24, json_guard=True)
    assert [g.token_ids for g in answers] == [g.token_ids for g in reference]
    assert all(len(s) == 2 for s in samples)
    assert all(g.text.strip() for g in answers)  # the trained model answers in words
    # The free arm and its JSON-constrained variant answered together: each arm's own answers and samples.
    from tunewise.evaluate.constrain import Constraint
    from tunewise.evaluate.engine import ArmRequest

    schema = {"type": "object", "properties": {k: {"type": "string"} for k in ("date", "time", "people")}}
    constrained = engine.generate_with_samples(
        chats, 2, seed=0, max_new_tokens=24, constraint=Constraint("json", schema)
    )
    together = engine.generate_arms(
        [ArmRequest(chats, json_guard=True), ArmRequest(chats, Constraint("json", schema))],
        2,
        seed=0,
        max_new_tokens=24,
    )
    ids = lambda runs: [[g.token_ids for g in per] for per in runs]  # noqa: E731
    assert [g.token_ids for g in together[0][0]] == [g.token_ids for g in reference]
    assert ids(together[0][1]) == ids(samples)
    assert [g.token_ids for g in together[1][0]] == [g.token_ids for g in constrained[0]]
    assert ids(together[1][1]) == ids(constrained[1])


FEW_SHOT = "Examples. Where is my card? card_arrival. Declined transfer again! declined_transfer. " * 3


def test_arms_answered_together_give_each_arms_outputs(tiny):
    """generate_arms(): a free arm, its constrained variant (same prompts) and a guarded arm with other prompts
    that share the system prompt are answered by one generate() call, each distinct prompt prefilled once, with
    the greedy answers and samples that generate_with_samples() gives each arm alone. An arm whose few-shot block
    would be lost to the shared prefix gets a call of its own."""
    from tunewise.evaluate.constrain import Constraint
    from tunewise.evaluate.engine import ArmRequest

    model, tokenizer = tiny
    engine = LocalEngine(model, tokenizer)
    regex = Constraint("regex", pattern="[a-z_]{1,12}")
    shot = [[{"role": "system", "content": SYSTEM + " " + FEW_SHOT}, c[1]] for c in CHATS[:3]]
    arms = [
        ArmRequest(CHATS[:4]),
        ArmRequest(CHATS[:4], constraint=regex),
        ArmRequest(CHATS[3:], json_guard=True),
        ArmRequest(shot),
    ]
    alone = [engine.generate_with_samples(a.prompts, 2, 1.0, 3, 6, a.constraint, a.json_guard) for a in arms]
    seen, handle = _prefill_rows(model)
    calls = []
    engine.progress = lambda done, tokens: calls.append((done, tokens))
    try:
        together = engine.generate_arms(arms, 2, temperature=1.0, seed=3, max_new_tokens=6)
    finally:
        handle.remove()
        engine.progress = None
    # Progress counts on across the two calls: every row of every arm, never going back.
    flat = [g for answers, samples in together for g in answers + [x for s in samples for x in s]]
    assert (
        calls[-1] == (len(flat), sum(g.completion_tokens for g in flat)) == (42, calls[-1][1])
    )  # 14 prompts x 3 rows
    assert calls == sorted(calls)
    ids = lambda runs: [[g.token_ids for g in per] for per in runs]  # noqa: E731
    for (answers, samples), (want, want_samples) in zip(together, alone, strict=True):
        assert [g.token_ids for g in answers] == [g.token_ids for g in want]
        assert ids(samples) == ids(want_samples)
    assert all(len(s) == 2 for _, samples in together for s in samples)
    assert all(len(g.text) <= 12 and g.text.replace("_", "").isalpha() for g in together[1][0])
    # First call: the system prompt, then the 6 distinct prompts of arms 0-2 (CHATS[:4] asked by two arms, and
    # CHATS[3] by all three), admitted together as 18 rows x 3 copies fit one batch. Second: the few-shot arm.
    assert seen["prefill"] == [1, 6, 1, 3]
    assert engine._arm_groups([[engine.encode(c) for c in a.prompts] for a in arms]) == [[0, 1, 2], [3]]
    engine.merge_arms = False
    apart = engine.generate_arms(arms, 2, temperature=1.0, seed=3, max_new_tokens=6)
    assert [ids([a]) for a, _ in apart] == [ids([a]) for a, _ in together]
    engine.merge_arms = True
    greedy = engine.generate_arms(arms[:2], 1, max_new_tokens=6)  # n < 2: greedy answers only
    assert [g.token_ids for g in greedy[0][0]] == [g.token_ids for g in alone[0][0]]
    assert greedy[1][1] == [[], [], [], []]
    assert engine.generate_arms([ArmRequest([]), ArmRequest([])], 2)[0] == ([], [])  # no prompts, no answers


def test_arms_batch_rows_fill_a_cache_budget(tiny):
    """generate_arms() batches up to `arm_rows` rows, as many as the keys and values of the longest prompt plus
    twice max_new_tokens fit in `arm_cache_bytes`, never fewer than the engine's own limits; its answers are
    those of smaller batches."""
    from tunewise.evaluate.engine import ArmRequest

    model, tokenizer = tiny
    engine = LocalEngine(model, tokenizer, max_batch_size=4)
    # The tiny Llama: 2 layers x (keys, values) x 2 kv heads x 16 dims x 4 bytes = 512 bytes per cache column.
    prompts = [[7] * 100, [8] * 60]
    per_row = 512 * (100 + 2 * 10)
    engine.arm_cache_bytes = per_row * 40
    assert engine._arm_batch_rows(prompts, 10) == 40
    engine.arm_rows = 24
    assert engine._arm_batch_rows(prompts, 10) == 24
    engine.arm_cache_bytes = per_row * 2
    assert engine._arm_batch_rows(prompts, 10) == 4  # the engine's own max_batch_size
    engine.max_batch_tokens = 300
    assert engine._arm_batch_rows(prompts, 10) == 3  # its own token limit: 300 // 100

    engine = LocalEngine(model, tokenizer, max_batch_size=4)
    arms = [ArmRequest(CHATS[:4]), ArmRequest(CHATS[2:6], json_guard=True)]
    small = engine.generate_arms(arms, 2, temperature=1.0, seed=1, max_new_tokens=5)
    engine.arm_rows = 64
    engine.arm_cache_bytes = 1 << 30
    widest = []
    record = lambda module, args, kwargs: widest.append(kwargs["input_ids"].shape[0])  # noqa: E731
    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        wide = engine.generate_arms(arms, 2, temperature=1.0, seed=1, max_new_tokens=5)
    finally:
        handle.remove()
    assert max(widest) == 24  # all rows (2 arms x 4 prompts x 3) decoded together, not 4 at a time
    assert (engine.max_batch_size, engine.max_batch_tokens) == (4, 8192)  # the engine's limits restored
    ids = lambda runs: [[g.token_ids for g in per] for per in runs]  # noqa: E731
    for (answers, samples), (want, want_samples) in zip(wide, small, strict=True):
        assert [g.token_ids for g in answers] == [g.token_ids for g in want]
        assert ids(samples) == ids(want_samples)


@pytest.mark.parametrize("continuous", [True, False])
def test_progress_hook_counts_finished_rows_and_their_tokens(tiny, continuous):
    """`progress(rows finished, their completion tokens)`: it ends at every row and every token generated."""
    model, tokenizer = tiny
    engine = LocalEngine(model, tokenizer, max_batch_size=2)
    engine.continuous = continuous
    calls = []
    engine.progress = lambda done, tokens: calls.append((done, tokens))
    gens = engine.generate(CHATS, max_new_tokens=4)
    assert calls[-1] == (len(CHATS), sum(g.completion_tokens for g in gens))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)  # never goes back
    assert len(calls) == (len(CHATS) if continuous else 3)  # each finished row, or each static batch
