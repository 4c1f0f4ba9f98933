"""The JSON loop guard: the tracker finds repeated keys and elements, and the engine takes a looping row back to
where the repetition began, with the model's own next-best token and a KV cache that forgets the dropped part."""

from __future__ import annotations

import pytest

from tunewise.errors import TunewiseError
from tunewise.evaluate.loopguard import JsonTracker, Repeat

torch = pytest.importorskip("torch")


def feed(pieces: list[str], tracker: JsonTracker | None = None) -> list[Repeat | None]:
    tracker = tracker or JsonTracker()
    return [tracker.feed(p) for p in pieces]


def test_a_repeated_key_points_back_to_the_comma_that_began_it():
    found = feed(['{"title": "x"', ', "extra": true', ', "extra"', ": true"])
    assert found == [None, None, Repeat(token=2, start=0), None]


def test_a_repeated_object_in_a_list_points_back_to_its_comma():
    found = feed(['[{"f": 1}', ',{"f": 2}', ',{"f":', " 1}", "]"])
    assert found == [None, None, None, Repeat(token=2, start=0), None]


def test_what_is_not_a_repetition():
    # The same key in different objects; scalars repeated in a list; an element that differs.
    assert feed(['[{"a": 1}, {"a": 2}, [1, 1, 1], "x", "x"]']) == [None]
    # Brackets, commas, quotes and escapes inside strings are text, not structure.
    assert feed(['{"a": "}, \\"a\\": [", "b": "x"}']) == [None]
    # Text before the JSON (a code fence, a sentence) is skipped.
    assert feed(['Sure, here it is: ```json\n{"a": 1, "b": 2}']) == [None]


def test_key_order_and_spacing_do_not_make_an_element_new():
    found = feed(['[{"a": 1, "b": [2, 3]}', ', {"b":[2,3],"a":1}'])
    assert found == [None, Repeat(token=1, start=0)]


def test_a_sealed_container_refuses_a_comma_but_not_one_in_a_string_or_deeper():
    closed = JsonTracker(sealed=frozenset({0}))  # the list starting at offset 0 is sealed
    feed(['[{"a": 1}'], closed)
    assert closed.would_refuse(",") and closed.would_refuse(" ,")
    assert not closed.would_refuse("]")
    open_object = JsonTracker(sealed=frozenset({0}))
    feed(['[{"a": 1'], open_object)
    assert open_object.would_refuse("},")  # closes the object, then "," lands in the sealed list
    assert not open_object.would_refuse(', "b": 2}')  # a member of the object, which is not sealed
    inner = JsonTracker(sealed=frozenset({0}))
    feed(['[{"a": "x'], inner)
    assert not inner.would_refuse(', y", "b": 2')  # in the string, then in the (unsealed) object
    assert inner.would_refuse('"},')


def test_a_closing_bracket_of_the_wrong_kind_is_refused_outside_strings_only():
    t = JsonTracker()
    feed(['[{"details": ["a", "b'], t)
    assert t.would_refuse('"}')  # ends the string, then closes the list as an object
    assert not t.would_refuse('"]') and not t.would_refuse('"]}]')
    assert not t.would_refuse('}"')  # inside the string it is text
    feed(['"'], t)
    assert t.would_refuse("}") and not t.would_refuse("]")
    feed(["]"], t)
    assert t.would_refuse("]") and not t.would_refuse("}]")  # now the object is open
    assert not JsonTracker().would_refuse("}")  # nothing open: text around the JSON is not judged


def _refuses_by_feeding(tracker: JsonTracker, piece: str) -> bool:
    """`would_refuse` spelled out: replay the text into a fresh tracker, then feed the piece one character at
    a time, checking each against the tracker's own structure."""
    probe = JsonTracker(frozenset(tracker.sealed))
    probe.feed(tracker.text)
    for ch in piece:
        if not probe._in_string and probe._stack:
            top = probe._stack[-1]
            if (ch == "," and top.start in probe.sealed) or (ch, top.kind) in (("]", "{"), ("}", "[")):
                return True
        probe.feed(ch)
    return False


def test_fuzzed_refusals_equal_feeding_character_by_character():
    import random

    rng = random.Random(1)
    alphabet = '{}[]",:\\ a1'
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        opens = [i for i, ch in enumerate(text) if ch in "{["]
        tracker = JsonTracker(frozenset(rng.sample(opens, k=min(len(opens), rng.randint(0, 2)))))
        tracker.feed(text)
        for _ in range(5):
            piece = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
            assert tracker.would_refuse(piece) == _refuses_by_feeding(tracker, piece), (text, piece)


def test_fuzzed_text_never_breaks_the_tracker():
    import random

    rng = random.Random(0)
    alphabet = '{}[]",:\\ ab1'
    for _ in range(500):
        tracker = JsonTracker()
        for _ in range(rng.randint(1, 30)):
            found = tracker.feed("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 4))))
            assert found is None or 0 <= found.start < len(tracker.text)


# --- the engine -----------------------------------------------------------------------------------------------


def scripted_engine(model, tokenizer, loop_for: set[int]):
    """A LocalEngine whose next-token scores follow a script keyed on the token just fed: a list of one object
    repeated forever for prompts whose length is in `loop_for` (told apart by position: lengths must differ
    modulo 5, an object's length in tokens), `[{"a":1}]` for the others.
    Each entry of the script ranks a first and a second choice; the real model still runs (cache, masks), and
    its raw logits are kept for inspection."""
    from tunewise.evaluate.engine import LocalEngine

    ids = {
        text: tokenizer.encode(text, add_special_tokens=False)
        for text in ["[", '{"', "a", '":', "1", "},", "}", "]"]
    }
    assert all(len(v) == 1 for v in ids.values()), ids
    tok = {text: v[0] for text, v in ids.items()}
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    after = {
        tok["["]: ['{"'],
        tok['{"']: ["a"],
        tok["a"]: ['":'],
        tok['":']: ["1"],
        tok["}"]: ["]"],
        tok["]"]: [None],
    }

    class Scripted(LocalEngine):
        raw: list[tuple[int, int, torch.Tensor]] = []  # (fed token, position, raw logits) of single-row steps

        def _forward(self, input_ids, attention_mask, position_ids, cache):
            raw = super()._forward(input_ids, attention_mask, position_ids, cache)
            scores = torch.zeros_like(raw)
            for row in range(raw.shape[0]):
                last, pos = int(input_ids[row, -1]), int(position_ids[row, -1])
                if input_ids.shape[1] > 1:  # the prefill: every script starts with "["
                    ranked = ["["]
                elif last == tok["1"]:  # the k-th object's "1" is at position len(prompt) + 4 + 5k
                    ranked = ["},", "}"] if (pos - 4) % 5 in {n % 5 for n in loop_for} else ["}", "},"]
                elif last == tok["},"]:
                    ranked = ['{"']
                else:
                    ranked = after.get(last, [None])
                for rank, text in enumerate(ranked):
                    scores[row, eos if text is None else tok[text]] = 10.0 - 5.0 * rank
                if raw.shape[0] == 1 and input_ids.shape[1] == 1:
                    self.raw.append((last, pos, raw[0].clone()))
            return scores

    return Scripted(model, tokenizer, min_shared_prefix=10_000), tok


def test_a_looping_row_is_taken_back_and_closes_its_list(tiny):
    model, tokenizer = tiny
    prompt = tokenizer.encode("make a list", add_special_tokens=False)
    engine, tok = scripted_engine(model, tokenizer, loop_for={len(prompt)})

    free = engine.generate([prompt], max_new_tokens=40)[0]
    assert free.finish_reason == "length" and free.text.startswith('[{"a":1},{"a":1},{"a":1},')

    engine.raw.clear()
    guarded = engine.generate([prompt], max_new_tokens=40, json_guard=True)[0]
    assert guarded.text == '[{"a":1}]'
    assert guarded.finish_reason == "stop" and guarded.rewinds == 1

    # The row went back: "1" (the object's last token before the dropped "},") was fed again at its own
    # position, and what the model computed there equals a clean forward over the kept tokens, so the dropped
    # tokens left the cache's attention entirely.
    kept = prompt + [tok["["], tok['{"'], tok["a"], tok['":'], tok["1"]]
    refed = [(pos, logits) for last, pos, logits in engine.raw if last == tok["1"]]
    assert [pos for pos, _ in refed] == [len(kept) - 1, len(kept) - 1 + 5, len(kept) - 1]
    with torch.no_grad():
        clean = model(input_ids=torch.tensor([kept])).logits[0, -1]
    torch.testing.assert_close(refed[-1][1], clean, rtol=1e-4, atol=1e-4)


def test_rows_that_do_not_loop_decode_as_without_the_guard(tiny):
    model, tokenizer = tiny
    looping = tokenizer.encode("make a list", add_special_tokens=False)
    plain = tokenizer.encode("make a much longer list, please", add_special_tokens=False)
    assert len(looping) % 5 != len(plain) % 5
    engine, _ = scripted_engine(model, tokenizer, loop_for={len(looping)})
    free = engine.generate([looping, plain], max_new_tokens=40)
    guarded = engine.generate([looping, plain], max_new_tokens=40, json_guard=True)
    assert free[1].text == guarded[1].text == '[{"a":1}]' and guarded[1].rewinds == 0
    assert guarded[0].text == '[{"a":1}]' and guarded[0].rewinds == 1
    # Streaming cannot take tokens back: there the guard is off.
    streamed = engine.generate([looping], max_new_tokens=40, json_guard=True, on_token=lambda i, t: None)
    assert streamed[0].finish_reason == "length"


def test_per_prompt_flags_guard_only_the_rows_flagged_even_with_on_token(tiny):
    model, tokenizer = tiny
    prompt = tokenizer.encode("make a list", add_special_tokens=False)
    engine, _ = scripted_engine(model, tokenizer, loop_for={len(prompt)})
    seen: list[tuple[int, int]] = []
    rows = engine.generate(
        [prompt, prompt],
        max_new_tokens=40,
        json_guard=[True, False],
        on_token=lambda i, t: seen.append((i, t)),
    )
    assert rows[0].text == '[{"a":1}]' and rows[0].rewinds == 1
    assert rows[1].finish_reason == "length" and rows[1].rewinds == 0
    assert {i for i, _ in seen} == {0, 1}  # on_token still hears every row (the server cancels through it)
    with pytest.raises(TunewiseError, match="1 json_guard flags for 2 prompts"):
        engine.generate([prompt, prompt], max_new_tokens=4, json_guard=[True])


def test_a_closing_bracket_of_the_wrong_kind_is_refused_for_the_models_next_choice(tiny):
    """A model that closes its object with `]` first and `}` second: free, it writes `[{"a":1]`; guarded, the
    `]` is refused and its own second choice closes the object, then the list."""
    from tunewise.evaluate.engine import LocalEngine
    from tunewise.evaluate.scorers import parse_json_strict

    model, tokenizer = tiny
    tok = {t: tokenizer.encode(t, add_special_tokens=False) for t in ["[", '{"', "a", '":', "1", "}", "]"]}
    assert all(len(v) == 1 for v in tok.values()), tok
    tok = {t: v[0] for t, v in tok.items()}
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    closes = {"}": 0}  # the object's "}" is chosen only as a second choice; after it, "]" then the end
    after = {tok["["]: ['{"'], tok['{"']: ["a"], tok["a"]: ['":'], tok['":']: ["1"], tok["1"]: ["]", "}"]}

    class Scripted(LocalEngine):
        def _forward(self, input_ids, attention_mask, position_ids, cache):
            raw = super()._forward(input_ids, attention_mask, position_ids, cache)
            scores = torch.zeros_like(raw)
            for row in range(raw.shape[0]):
                last = int(input_ids[row, -1])
                if input_ids.shape[1] > 1:
                    ranked = ["["]
                elif last == tok["}"]:
                    closes["}"] += 1
                    ranked = ["]"]
                else:
                    ranked = after.get(last, [None])
                for rank, text in enumerate(ranked):
                    scores[row, eos if text is None else tok[text]] = 10.0 - 5.0 * rank
            return scores

    engine = Scripted(model, tokenizer, min_shared_prefix=10_000)
    prompt = tokenizer.encode("one object in a list", add_special_tokens=False)
    free = engine.generate([prompt], max_new_tokens=20)[0]
    assert free.text == '[{"a":1]' and not parse_json_strict(free.text)[0]
    guarded = engine.generate([prompt], max_new_tokens=20, json_guard=True)[0]
    assert guarded.text == '[{"a":1}]' and guarded.finish_reason == "stop"
    assert (guarded.refusals, guarded.rewinds, free.refusals) == (1, 0, 0)
    assert parse_json_strict(guarded.text) == (True, [{"a": 1}]) and closes["}"] == 1
