"""GenerateEngine (batched `model.generate` + logits processors) against LocalEngine, on the tiny random model."""

from __future__ import annotations

import functools

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("xgrammar")

from tunewise.errors import TunewiseError  # noqa: E402
from tunewise.evaluate.batched import GenerateEngine  # noqa: E402
from tunewise.evaluate.constrain import Constraint  # noqa: E402
from tunewise.evaluate.engine import LocalEngine, SamplingParams  # noqa: E402

SYSTEM = "Classify the customer message and answer in JSON with its category and priority."
USERS = [
    "Where is my card?",
    "I was charged twice for the same coffee, please refund me",
    "hi",
    "My top up by bank transfer had a fee, why?",
    "Declined transfer again!",
    "A refund is not showing up in my statement after two weeks of waiting",
]
CHATS = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": u}] for u in USERS]
SCHEMA = Constraint(
    "json",
    schema={
        "type": "object",
        "properties": {"category": {"enum": ["billing", "card"]}, "priority": {"type": "integer"}},
        "required": ["category", "priority"],
    },
)
REGEX = Constraint("regex", pattern="[a-z]{2,6}( [a-z]{2,6})?")


def _ids(gens) -> list[tuple[int, ...]]:
    return [g.token_ids for g in gens]


@pytest.fixture(scope="module")
def stop(tiny) -> list[int]:
    """Stop tokens with one the random model emits mid-way, so rows finish at different steps."""
    model, tokenizer = tiny
    engine = LocalEngine(model, tokenizer)
    third = engine.generate(CHATS[:1], max_new_tokens=3)[0].token_ids[2]
    return sorted(engine.stop_token_ids | {third})


@pytest.mark.parametrize("batch_size", [4, 32])
@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"json_guard": True},
        {"constraint": SCHEMA},
        {"constraint": REGEX},
        {"constraint": [SCHEMA, None, REGEX, None, SCHEMA, REGEX], "json_guard": True},
    ],
    ids=["free", "guarded", "json-schema", "regex", "mixed"],
)
def test_greedy_outputs_equal_local_engine(tiny, stop, batch_size, settings):
    model, tokenizer = tiny
    local = LocalEngine(model, tokenizer, stop_token_ids=stop)
    batched = GenerateEngine(model, tokenizer, max_batch_size=batch_size, stop_token_ids=stop)
    want = local.generate(CHATS, max_new_tokens=12, **settings)
    got = batched.generate(CHATS, max_new_tokens=12, **settings)
    assert _ids(got) == _ids(want)
    assert [g.text for g in got] == [g.text for g in want]
    assert [g.finish_reason for g in got] == [g.finish_reason for g in want]
    assert [(g.prompt_tokens, g.completion_tokens) for g in got] == [
        (g.prompt_tokens, g.completion_tokens) for g in want
    ]
    if not settings:  # rows finished at different steps: the comparison covers both endings
        assert {g.finish_reason for g in got} == {"stop", "length"}
    assert all(g.latency_ms > 0 for g in got)


def test_constrained_rows_match_their_grammar(tiny):
    import re

    model, tokenizer = tiny
    gens = GenerateEngine(model, tokenizer).generate(CHATS, max_new_tokens=12, constraint=REGEX)
    finished = [g for g in gens if g.finish_reason == "stop"]
    assert finished and all(re.fullmatch(REGEX.pattern, g.text) for g in finished)


def test_samples_are_seeded_and_leave_the_global_generator_alone(tiny):
    model, tokenizer = tiny
    engine = GenerateEngine(model, tokenizer)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = engine.sample(CHATS[:3], n=3, temperature=1.0, seed=1, max_new_tokens=6)
    after = torch.rand(1)
    b = engine.sample(CHATS[:3], n=3, temperature=1.0, seed=1, max_new_tokens=6)
    c = engine.sample(CHATS[:3], n=3, temperature=1.0, seed=2, max_new_tokens=6)
    assert torch.equal(before, after)
    assert [len(x) for x in a] == [3, 3, 3]
    flat = lambda runs: [g.token_ids for per in runs for g in per]  # noqa: E731
    assert flat(a) == flat(b) and flat(a) != flat(c)
    assert len({g.token_ids for g in a[0]}) > 1


def test_per_request_params_and_streaming_are_served_by_the_local_engine(tiny):
    model, tokenizer = tiny
    local, batched = LocalEngine(model, tokenizer), GenerateEngine(model, tokenizer)
    params = [SamplingParams(max_new_tokens=5, temperature=1.0, seed=s) for s in range(3)]
    assert _ids(batched.generate(CHATS[:3], params=params)) == _ids(local.generate(CHATS[:3], params=params))
    heard: list[int] = []
    batched.generate(CHATS[:2], max_new_tokens=4, on_token=lambda i, t: heard.append(i))
    assert sorted(heard) == [0] * 4 + [1] * 4


def test_bad_arguments_are_user_errors(tiny):
    model, tokenizer = tiny
    engine = GenerateEngine(model, tokenizer)
    with pytest.raises(TunewiseError, match="max_new_tokens"):
        engine.generate(CHATS, max_new_tokens=0)
    with pytest.raises(TunewiseError, match="1 json_guard flags for 2 prompts"):
        engine.generate(CHATS[:2], json_guard=[True])
    assert engine.generate([]) == []


# --- the loop guard on generate: a model whose next token follows a script --------------------------------


def _scripted(model, tokenizer, loop_for: set[int], wrong_bracket: bool = False):
    """The tiny model with its next-token scores replaced by a script keyed on the last token fed: a list of
    one object repeated forever for prompts whose length is in `loop_for` (told apart by position modulo 5, an
    object's length in tokens), `[{"a":1}]` for the others; with `wrong_bracket`, the object's value is
    followed by `]` first and `}` second. The real forward still runs (cache, masks)."""
    words = ["[", '{"', "a", '":', "1", "},", "}", "]"]
    tok = {w: tokenizer.encode(w, add_special_tokens=False) for w in words}
    assert all(len(v) == 1 for v in tok.values()), tok
    tok = {w: v[0] for w, v in tok.items()}
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    after = {tok["["]: ['{"'], tok['{"']: ["a"], tok["a"]: ['":'], tok["},"]: ['{"'], tok["}"]: ["]"]}
    loops = {n % 5 for n in loop_for}
    forward = model.forward

    @functools.wraps(forward)
    def scripted(*args, **kwargs):
        out = forward(*args, **kwargs)
        input_ids, positions = kwargs["input_ids"], kwargs.get("position_ids")
        logits = torch.zeros_like(out.logits)
        for row in range(input_ids.shape[0]):
            last = int(input_ids[row, -1])
            pos = int(positions[row, -1]) if positions is not None else input_ids.shape[1] - 1
            if last == tok["1"] and wrong_bracket:
                ranked = ["]", "}"]
            elif last == tok["1"]:  # the k-th object's "1" is at position len(prompt) + 4 + 5k
                ranked = ["},", "}"] if (pos - 4) % 5 in loops else ["}", "},"]
            elif last == tok['":']:
                ranked = ["1"]
            elif last == tok["]"]:
                ranked = [None]
            else:
                ranked = after.get(last, ["["])  # a prompt's last token: every answer starts with "["
            for rank, word in enumerate(ranked):
                logits[row, -1, eos if word is None else tok[word]] = 10.0 - 5.0 * rank
        out.logits = logits
        return out

    return scripted


def test_a_looping_row_is_resumed_before_the_repetition_as_local_engine_takes_it_back(tiny, monkeypatch):
    model, tokenizer = tiny
    looping = tokenizer.encode("make a list", add_special_tokens=False)
    plain = tokenizer.encode("make a much longer list, please", add_special_tokens=False)
    assert len(looping) % 5 != len(plain) % 5
    monkeypatch.setattr(model, "forward", _scripted(model, tokenizer, {len(looping)}))
    local = LocalEngine(model, tokenizer, min_shared_prefix=10_000)
    batched = GenerateEngine(model, tokenizer)

    free = batched.generate([looping, plain], max_new_tokens=40)
    assert free[0].finish_reason == "length" and free[0].text.startswith('[{"a":1},{"a":1},{"a":1},')
    assert free[1].text == '[{"a":1}]'

    guarded = batched.generate([looping, plain], max_new_tokens=40, json_guard=True)
    assert [g.text for g in guarded] == ['[{"a":1}]', '[{"a":1}]']
    assert [g.rewinds for g in guarded] == [1, 0] and guarded[0].finish_reason == "stop"
    assert _ids(guarded) == _ids(local.generate([looping, plain], max_new_tokens=40, json_guard=True))
    # With a budget that ends while the list still loops, both engines stop at the same token.
    short = [batched.generate([looping], max_new_tokens=n, json_guard=True)[0] for n in (8, 12)]
    assert _ids(short) == [local.generate([looping], max_new_tokens=n, json_guard=True)[0].token_ids
                           for n in (8, 12)]  # fmt: skip


def test_a_wrong_closing_bracket_is_refused_for_the_models_next_choice(tiny, monkeypatch):
    model, tokenizer = tiny
    prompt = tokenizer.encode("one object in a list", add_special_tokens=False)
    monkeypatch.setattr(model, "forward", _scripted(model, tokenizer, set(), wrong_bracket=True))
    local = LocalEngine(model, tokenizer, min_shared_prefix=10_000)
    batched = GenerateEngine(model, tokenizer)
    assert batched.generate([prompt], max_new_tokens=20)[0].text == '[{"a":1]'
    guarded = batched.generate([prompt], max_new_tokens=20, json_guard=True)[0]
    assert (guarded.text, guarded.refusals, guarded.rewinds) == ('[{"a":1}]', 1, 0)
    assert guarded.token_ids == local.generate([prompt], max_new_tokens=20, json_guard=True)[0].token_ids
