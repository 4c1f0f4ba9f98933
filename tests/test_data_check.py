"""The data checker: every problem found, on the right line, summarized when repeated; never a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunewise.data.check import CheckOptions
from tunewise.data.validate import check_files, options_from_spec
from tunewise.models.tokenizer import ChatTokenizer
from tunewise.spec import EMBEDDED_MODEL, parse_spec


def chat(user: str, answer: str) -> str:
    return json.dumps(
        {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
    )


@pytest.fixture(scope="module")
def tokenizer() -> ChatTokenizer:
    return ChatTokenizer.for_base(EMBEDDED_MODEL)


def codes_at(report) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for group in report.problems.sorted():
        found.setdefault(group.code, []).extend(line for _, line, _ in group.first)
    return found


def seeded_file(tmp_path: Path) -> Path:
    """One example of each problem the checker knows, each on its own line (see the comments)."""
    long_text = " ".join(f"w{i}x" for i in range(6000))  # far more than 8,192 tokens
    lines = [
        b"\xef\xbb\xbf" + chat("How do I reset my password?", "account").encode(),  # 1 BOM
        chat("Where is my parcel, it is late", "delivery").encode(),  # 2 valid
        b'{"messages": [',  # 3 invalid JSON
        b'{"messages": [{"role": "user", "content": "caf\xe9"}]}',  # 4 invalid UTF-8
        b"[1, 2]",  # 5 not an object
        json.dumps({"prompt": "a", "completion": "b"}).encode(),  # 6 mixed formats
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "x y z", "foo": 1},
                    {"role": "assistant", "content": "refund"},
                ]
            }
        ).encode(),  # 7 unknown key
        json.dumps(
            {"messages": [{"content": "x"}, {"role": "assistant", "content": "refund"}]}
        ).encode(),  # 8 missing role
        json.dumps(
            {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "refund"}]}
        ).encode(),  # 9 unknown role
        json.dumps(
            {"messages": [{"role": "assistant", "content": "refund"}, {"role": "user", "content": "x"}]}
        ).encode(),  # 10 order
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "user", "content": "b"},
                    {"role": "assistant", "content": "refund"},
                ]
            }
        ).encode(),  # 11 alternation
        chat("my card", "  ").encode(),  # 12 empty content
        json.dumps(
            {"messages": [{"role": "user", "content": "only a question"}]}
        ).encode(),  # 13 no assistant
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "refund", "weight": 2},
                ]
            }
        ).encode(),  # 14 weight
        chat("I want my money back for the order", "money").encode(),  # 15 label not in the set
        chat("Where is my parcel, it is late", "delivery").encode(),  # 16 exact duplicate of 2
        chat("where is my parcel, it is late!!", "delivery").encode(),  # 17 near duplicate of 2
        b"",  # 18 blank line
        chat(long_text, "account").encode(),  # 19 longer than the context
        chat("Where is my parcel, it is late", "refund").encode(),  # 20 same input, different answer
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


# The problems of the seeded file that concern one line's bytes, JSON and structure alone.
STRUCTURAL = {
    "bom": [1],
    "invalid_json": [3],
    "invalid_utf8": [4],
    "not_object": [5],
    "mixed_formats": [6],
    "unknown_key": [7],
    "missing_key": [8],
    "unknown_role": [9],
    "role_order": [10, 11],
    "empty_content": [12],
    "no_assistant": [13],
    "invalid_weight": [14],
    "blank_line": [18],
}


def test_seeded_file_reports_each_problem_on_its_line(tmp_path: Path, tokenizer):
    path = seeded_file(tmp_path)
    opts = options_from_spec(None, tokenizer=tokenizer)
    opts.labels = ["account", "delivery", "refund"]
    report = check_files([path], None, opts, tokenizer)
    found = codes_at(report)
    # Every structural problem, plus what needs the contract, the tokenizer or the whole file.
    expected = {
        **STRUCTURAL,
        "contract_label": [15],
        "duplicate": [16],
        "too_long": [19],
        "conflicting_answers": [2],
    }
    for code, lines_ in expected.items():
        assert sorted(found.get(code) or []) == lines_, (
            f"{code}: expected lines {lines_}, got {found.get(code)}"
        )
    assert 2 in found["near_duplicates"], found["near_duplicates"]
    assert "too_few" in found  # 20 lines: under the guide's 50
    assert report.errors > 0


def test_leakage_between_train_and_eval(tmp_path: Path):
    train = tmp_path / "train.jsonl"
    held = tmp_path / "eval.jsonl"
    train.write_text(
        "\n".join(chat(f"question number {i} about my account balance", "a") for i in range(60)) + "\n"
    )
    held.write_text(
        chat("question number 7 about my account balance", "a")
        + "\n"  # exact leak
        + chat("Question number 7 about my account balance!", "a")
        + "\n"  # near leak
        + chat("a completely different sentence on deliveries and parcels", "a")
        + "\n"
    )
    report = check_files([train], [held], CheckOptions(), None)
    found = codes_at(report)
    assert found["leakage"] == [1]
    assert found["near_leakage"] == [2]


def test_imbalance_and_per_class_minimum(tmp_path: Path):
    rows = [chat(f"text {i} alpha", "a") for i in range(100)] + [
        chat(f"text {i} beta", "b") for i in range(5)
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(rows) + "\n")
    report = check_files([path], None, CheckOptions(near_duplicates=False), None)
    found = codes_at(report)
    assert "imbalance" in found
    assert report.stats["labels"] == {"a": 100, "b": 5}
    assert report.errors == 0


def test_json_and_regex_contracts(tmp_path: Path):
    spec = parse_spec(
        "task: {name: t, target: Extract the order as JSON with an id field.}\n"
        "contract: {type: json, schema: {type: object, required: [id], properties: {id: {type: integer}}}}\n"
        "system_prompt: Return JSON.\ndata: {train: x.jsonl}\n"
    )
    path = tmp_path / "j.jsonl"
    path.write_text(
        "\n".join([chat("order 1", '{"id": 1}'), chat("order 2", "{id: 2}"), chat("order 3", '{"id": "3"}')])
        + "\n"
    )
    found = codes_at(check_files([path], None, options_from_spec(spec), None))
    assert found["contract_json"] == [2]
    assert found["contract_schema"] == [3]
    opts = CheckOptions(pattern=r"[A-Z]{3}-\d+")
    path.write_text("\n".join([chat("a", "ABC-12"), chat("b", "abc-12")]) + "\n")
    assert codes_at(check_files([path], None, opts, None))["contract_regex"] == [2]


def test_repeated_problems_are_summarized(tmp_path: Path):
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(chat(f"q{i}", "") for i in range(1000)) + "\n")
    report = check_files([path], None, CheckOptions(near_duplicates=False), None)
    group = next(g for g in report.problems.sorted() if g.code == "empty_content")
    assert group.count == 1000
    assert [line for _, line, _ in group.first] == [1, 2, 3, 4, 5]


def test_other_formats_are_normalized(tmp_path: Path):
    rows = {
        "pc.jsonl": [{"prompt": "hello there", "completion": "hi"}],
        "alpaca.jsonl": [{"instruction": "Say hi", "input": "to Bob", "output": "Hi Bob"}],
        "sharegpt.jsonl": [
            {"conversations": [{"from": "human", "value": "hey"}, {"from": "gpt", "value": "hello"}]}
        ],
    }
    for name, records in rows.items():
        path = tmp_path / name
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
        report = check_files([path], None, CheckOptions(), None)
        assert report.errors == 0, report.to_json()
        assert report.files[0]["examples"] == 1
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('text,label\n"hello, world",greeting\nbye,farewell\n')
    report = check_files(
        [csv_path], None, CheckOptions(csv_columns={"prompt": "text", "completion": "label"}), None
    )
    assert report.errors == 0 and report.files[0]["examples"] == 2
    report = check_files(
        [csv_path], None, CheckOptions(csv_columns={"prompt": "txt", "completion": "label"}), None
    )
    assert "missing_key" in codes_at(report)


def test_token_statistics_match_the_tokenizer(tmp_path: Path, tokenizer):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(chat(f"message number {i}", "positive") for i in range(10)) + "\n")
    report = check_files([path], None, options_from_spec(None, tokenizer=tokenizer), tokenizer)
    tokens = report.stats["tokens"]
    assert tokens["exact"] is True and tokens["sampled"] == 10
    messages = [{"role": "user", "content": "message number 0"}, {"role": "assistant", "content": "positive"}]
    full = tokenizer.count([tokenizer.render(messages)])[0]
    prompt = tokenizer.count([tokenizer.render(messages[:1], add_generation_prompt=True)])[0]
    assert tokens["completion"]["p50"] == full - prompt  # 'positive' + <|im_end|> + newline
    assert tokens["total"]["max"] >= full


def test_empty_file_is_an_error(tmp_path: Path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    report = check_files([path], None, CheckOptions(), None)
    assert codes_at(report)["empty_file"] == [0]


def test_parallel_workers_agree_with_one(tmp_path: Path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(chat(f"row {i} text", "x" if i % 3 else "") for i in range(3000)) + "\n")
    one = check_files([path], None, CheckOptions(workers=1), None)
    import tunewise.data.check as check_module

    old = check_module.PARALLEL_MIN_BYTES
    check_module.PARALLEL_MIN_BYTES = 0
    try:
        two = check_files([path], None, CheckOptions(workers=2), None)
    finally:
        check_module.PARALLEL_MIN_BYTES = old
    assert one.errors == two.errors == 1000

    def first(r):
        return [line for g in r.problems.sorted() if g.code == "empty_content" for _, line, _ in g.first]

    assert first(one) == first(two) == [1, 4, 7, 10, 13]
    assert one.files[0]["examples"] == two.files[0]["examples"] == 2000


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.binary(max_size=80)
        | st.sampled_from(
            [
                b'{"messages": [{"role": "user"}]}',
                b'{"prompt": 1}',
                b"\xef\xbb\xbf{}",
                b'{"conversations": [{"from": 1}]}',
                b'{"messages": [{"role": "assistant", "content": "x", "weight": true}]}',
            ]
        ),
        max_size=8,
    )
)
def test_fuzz_never_crashes(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("fuzz") / "f.jsonl"
    path.write_bytes(b"\n".join(lines))
    report = check_files([path], None, CheckOptions(), None)
    n_lines = len(b"\n".join(lines).split(b"\n"))
    for group in report.problems.sorted():
        assert group.count >= len(group.first) >= 1
        assert all(0 <= line <= n_lines for _, line, _ in group.first), group.to_json()
    json.dumps(report.to_json())  # the report is always serializable


def test_every_shared_dataset_passes(shared_datasets: Path, tokenizer):
    trains = sorted(shared_datasets.glob("*/train.jsonl"))
    assert trains
    for train in trains:
        report = check_files([train], None, options_from_spec(None, tokenizer=tokenizer), tokenizer)
        assert report.errors == 0, (train, [g.to_json() for g in report.problems.sorted()][:3])
        # One example per non-blank line: none lost (the sets range from a few hundred to 10k examples).
        lines = sum(1 for line in train.read_text(encoding="utf-8").splitlines() if line.strip())
        assert report.files[0]["examples"] == lines > 200, train


def test_structure_only_reports_the_structural_problems(tmp_path: Path, run_cli):
    path = seeded_file(tmp_path)
    opts = CheckOptions(labels=["account", "delivery", "refund"], structure_only=True)
    report = check_files([path], None, opts, None)
    found = codes_at(report)
    for code, lines_ in STRUCTURAL.items():
        assert sorted(found.get(code, [])) == lines_, f"{code}: expected {lines_}, got {found.get(code)}"
    assert "too_few" in found  # the example counts are structural too
    # Nothing that needs the contract, other examples or a tokenizer.
    for code in ("contract_label", "duplicate", "near_duplicates", "conflicting_answers", "too_long"):
        assert code not in found, code
    assert report.files[0]["examples"] == 7  # lines 1, 2, 15, 16, 17, 19 and 20
    assert any(note.startswith("structure only") for note in report.notes)
    code, out, err = run_cli("data", "check", path, "--structure-only", "--json", cwd=tmp_path)
    assert code == 1, err
    payload = json.loads(out)
    cli_found: dict[str, list[int]] = {}
    for group in payload["problems"]:
        cli_found.setdefault(group["code"], []).extend(f["line"] for f in group["first"])
    assert {k: sorted(v) for k, v in cli_found.items() if k in STRUCTURAL} == STRUCTURAL
    assert "tokens" not in payload["stats"] and "labels" not in payload["stats"]


def test_structure_only_counts_like_the_full_check(tmp_path: Path):
    path = tmp_path / "p.jsonl"
    rows = [chat(f"row {i} text", "x" if i % 3 else "") for i in range(3000)]
    rows[10] = json.dumps(
        {"messages": [{"role": "system", "content": "s"}, *json.loads(rows[10])["messages"]]}
    )
    path.write_text("\n".join(rows) + "\n")
    full = check_files([path], None, CheckOptions(), None)
    fast = check_files([path], None, CheckOptions(structure_only=True), None)
    assert fast.files[0]["examples"] == full.files[0]["examples"] == 2000
    assert fast.errors == full.errors == 1000


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text(alphabet=" \t\n\x0b\x1c\x85\xa0\u2003\u3000aZ09٣ΣσİẞΟ.\x00'", max_size=12), max_size=12)
)
def test_batch_normalization_matches_one_by_one(texts):
    from tunewise.data.minhash import normalize_text, normalize_texts

    assert normalize_texts(texts) == [normalize_text(t) for t in texts]


def test_batch_normalization_agrees_on_every_character():
    """normalize_texts asks str.isspace and str.isdecimal; normalize_text uses str.split and \\d."""
    from tunewise.data.minhash import normalize_text, normalize_texts

    chars = [chr(c) for c in range(1, 0x30000) if not 0xD800 <= c < 0xE000]
    texts = [f"a{c}{c}b {c}" for c in chars]
    assert normalize_texts(texts) == [normalize_text(t) for t in texts]


def test_signer_and_components_match_the_direct_computation():
    import numpy as np

    from tunewise.data import minhash

    rng = np.random.default_rng(0)
    words = ["card", "arrive", "refund", "late", "pin", "blocked", "top", "up", "fee"]
    texts = [" ".join(rng.choice(words, rng.integers(1, 8))) + f" {i}" for i in range(3000)]
    texts += ["w0x " * 200, "   ", ""]  # a long text of one pattern, blank ones
    signer = minhash.Signer(batch=500)
    for i in range(0, len(texts), 700):
        signer.add(texts[i : i + 700])
    sig = signer.matrix()
    ids = np.frombuffer(signer.ids, dtype=np.uint32)
    assert len(sig) < len(texts)  # the numbers are normalized away: many equal texts
    assert np.array_equal(sig[ids], minhash.signatures(texts))
    # Components against a plain union-find on random graphs.
    for n, m in ((50, 30), (2000, 1500), (2000, 6000)):
        a, b = rng.integers(0, n, m), rng.integers(0, n, m)
        parent = list(range(n))
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = _find(parent, x), _find(parent, y)
            parent[max(rx, ry)] = min(rx, ry)
        assert minhash.components(n, a, b).tolist() == [_find(parent, x) for x in range(n)]


def _find(parent: list[int], x: int) -> int:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def test_block_boundaries_do_not_move_lines(tmp_path: Path, monkeypatch):
    """Lines split across read blocks, CRLF endings, a BOM and no final newline: the same report."""
    import tunewise.data.check as check_module

    path = seeded_file(tmp_path)
    body = path.read_bytes().replace(b"\n", b"\r\n", 5).rstrip(b"\n")
    path.write_bytes(body + b"\n" + chat("last line, no newline", "refund").encode())
    whole = check_files([path], None, CheckOptions(), None).to_json()
    for block in (1, 7, 64, 1000):
        monkeypatch.setattr(check_module, "BLOCK", block)
        small = check_files([path], None, CheckOptions(), None).to_json()
        whole["seconds"] = small["seconds"] = 0
        assert small == whole, block
    assert codes_at(check_files([path], None, CheckOptions(), None))["bom"] == [1]


def test_no_valid_example_is_a_too_few_error(tmp_path: Path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{oops\n{"messages": []}\n\n')
    report = check_files([path], None, CheckOptions(), None)
    codes = codes_at(report)
    assert codes["too_few"] == [0]
    assert [g.severity for g in report.problems.sorted() if g.code == "too_few"] == ["error"]
    assert report.files[0]["examples"] == 0
