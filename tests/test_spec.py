from pathlib import Path

import pytest

from tunewise.errors import ConfigError
from tunewise.scaffold import TEMPLATE
from tunewise.spec import EMBEDDED_MODEL, JsonContract, LabelContract, parse_spec

MINIMAL = """\
task:
  name: t
  target: Given a review, answer with its sentiment label.
contract: {type: label, labels: [positive, negative]}
system_prompt: Answer positive or negative.
data: {train: train.jsonl}
"""


def test_minimal_spec_gets_documented_defaults():
    spec = parse_spec(MINIMAL)
    assert isinstance(spec.contract, LabelContract)
    assert spec.model.base == EMBEDDED_MODEL
    assert spec.method == "lora"
    assert spec.hyperparameters.epochs == "auto"
    assert spec.data.train == ["train.jsonl"]
    assert spec.evaluation.consistency_samples == 5
    assert spec.warnings() == []


def test_every_problem_reported_at_once_with_lines_and_suggestions():
    text = """\
task:
  name: x
  taget: y
contract:
  type: label
  labels: [a]
data:
  train: a.jsonl
hyperparameters:
  learning_rte: 3
  epochs: 0
methd: lora
"""
    with pytest.raises(ConfigError) as info:
        parse_spec(text)
    problems = info.value.problems
    assert "line 3: unknown key 'task.taget' (did you mean 'target'?)" in problems
    assert "line 10: unknown key 'hyperparameters.learning_rte' (did you mean 'learning_rate'?)" in problems
    assert "line 12: unknown key 'methd' (did you mean 'method'?)" in problems
    assert any(p.startswith("line 6: contract.labels") for p in problems)
    assert any(p.startswith("line 11: hyperparameters.epochs") and "'auto'" in p for p in problems)
    assert any("'task.target' is required" in p for p in problems)
    assert len(problems) == 6


def test_json_contract_schema_is_checked():
    bad = MINIMAL.replace("{type: label, labels: [positive, negative]}", "{type: json, schema: {type: 12}}")
    with pytest.raises(ConfigError, match="not a valid JSON Schema"):
        parse_spec(bad)
    good = MINIMAL.replace(
        "{type: label, labels: [positive, negative]}", "{type: json, schema: {type: object, required: [a]}}"
    )
    spec = parse_spec(good)
    assert isinstance(spec.contract, JsonContract)
    assert spec.contract.json_schema["required"] == ["a"]


def test_bad_regex_and_yaml_errors_are_config_errors():
    with pytest.raises(ConfigError, match="does not compile"):
        parse_spec(
            MINIMAL.replace("{type: label, labels: [positive, negative]}", "{type: regex, pattern: '(['}")
        )
    with pytest.raises(ConfigError, match="line 3: not valid YAML"):
        parse_spec("task:\n  name: [unclosed\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        parse_spec("- a list\n")


def test_vague_target_and_missing_contract_warn():
    spec = parse_spec("task: {name: t, target: marketing}\ndata: {train: a.jsonl}\n")
    warnings = spec.warnings()
    assert any("task.target is vague" in w for w in warnings)
    assert any("no output contract" in w for w in warnings)
    assert any("system_prompt is empty" in w for w in warnings)


def test_scaffold_template_is_a_valid_spec():
    spec = parse_spec(TEMPLATE.format(name="demo"))
    assert spec.task.name == "demo"
    assert spec.warnings() == []


def test_init_creates_project_layout_and_refuses_overwrite(tmp_path: Path, run_cli):
    code, out, _ = run_cli("init", tmp_path / "p")
    assert code == 0, out
    assert (tmp_path / "p" / "tunewise.yaml").is_file()
    assert (tmp_path / "p" / ".tunewise" / "registry.sqlite3").is_file()
    code, _, err = run_cli("init", tmp_path / "p")
    assert code == 1
    assert "already exists" in err and "--force" in err
    assert "Traceback" not in err


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200) | st.sampled_from([MINIMAL[:n] for n in range(0, len(MINIMAL), 7)]))
def test_fuzz_spec_parser_only_raises_config_errors(text):
    try:
        parse_spec(text)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)


def test_arms_name_their_variants_and_must_fit_the_contract():
    ok = parse_spec(MINIMAL + "evaluation: {arms: [zero-shot, few-shot+scored, fine-tuned+scored]}\n")
    assert ok.evaluation.arms == ["zero-shot", "few-shot+scored", "fine-tuned+scored"]
    with pytest.raises(ConfigError) as info:
        parse_spec(MINIMAL + "evaluation:\n  arms: [zero-shot, fine-tunned]\n")
    assert info.value.problems == [
        "line 8: evaluation.arms: unknown arm 'fine-tunned' (did you mean 'fine-tuned'?)"
    ]
    with pytest.raises(ConfigError, match=r"unknown variant '\+fast'"):
        parse_spec(MINIMAL + "evaluation: {arms: [few-shot+fast]}\n")
    with pytest.raises(
        ConfigError, match=r"'few-shot\+constrained' does not fit a label contract \(use \+scored\)"
    ):
        parse_spec(MINIMAL + "evaluation: {arms: [few-shot+constrained]}\n")
    with pytest.raises(ConfigError, match="label_scoring"):
        parse_spec(MINIMAL + "evaluation: {label_scoring: median}\n")


@pytest.mark.parametrize(
    ("key", "good", "bad"), [("micro_batch_tokens", 512, 8), ("micro_batch_workers", 1, 0)]
)
def test_micro_batch_settings_reach_the_training_config(tmp_path: Path, key: str, good: int, bad: int):
    from tunewise.train.cli import config_from_spec

    assert getattr(parse_spec(MINIMAL).hyperparameters, key) == "auto"
    spec = tmp_path / "tunewise.yaml"
    spec.write_text(MINIMAL + f"hyperparameters: {{{key}: {good}}}\n")
    values, _, _ = config_from_spec(spec)
    assert values[key] == good
    with pytest.raises(ConfigError) as info:
        parse_spec(MINIMAL + f"hyperparameters:\n  {key}: {bad}\n")
    assert any(p.startswith(f"line 8: hyperparameters.{key}") for p in info.value.problems)


# --- hostile YAML: refused before any work, one error line ------------------------------------------------

HEAD = "task: {name: t, target: Classify a review by its sentiment.}\ndata: {train: x.jsonl}\n"


def _laughs(levels: int) -> str:
    """A billion-laughs document: each level's anchor lists ten aliases of the one before (10**levels values)."""
    text = "l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, levels):
        text += f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]\n"
    return text


HOSTILE = {
    # name: (file bytes, the line the error names, words the error must hold)
    "alias bomb": (HEAD + _laughs(9), 6, "alias *l2 takes the document past the alias budget"),
    "alias bomb in a schema's examples": (
        HEAD
        + _laughs(3)  # within the budget by itself (1,220 values)
        + "contract:\n  type: json\n  schema:\n    type: object\n    examples: ["
        + ", ".join(["*l2"] * 10)  # 1,111 values each
        + "]\n",
        10,
        "alias *l2 takes the document past the alias budget",
    ),
    "recursive alias": (
        HEAD + "system_prompt: &a [*a]\n",
        3,
        "alias *a refers to a collection that contains it",
    ),
    "100k-deep flow nesting": (
        HEAD + "system_prompt: " + "[" * 100_000 + "]" * 100_000 + "\n",
        3,
        "nest more than 100",
    ),
    "5k-deep block nesting": (HEAD + "system_prompt:\n" + "- " * 5000 + "x\n", 4, "nest more than 100 deep"),
    "1k-deep indented block nesting": (  # 500 KB: indentation that deep would pass the size limit first
        HEAD + "system_prompt:\n" + "".join(" " * i + "-\n" for i in range(1, 1001)),
        103,
        "nest more than 100 deep",
    ),
    "60k values": (
        HEAD + "system_prompt: [" + ", ".join(["a"] * 60_000) + "]\n",
        3,
        "more than 50,000 values",
    ),
    "huge integer": (
        HEAD + "hyperparameters: {epochs: 1" + "0" * 5000 + "}\n",
        3,
        "integer of 5,001 characters",
    ),
    "huge hex integer": (HEAD + "hyperparameters:\n  epochs: 0x" + "f" * 5000 + "\n", 4, "too large"),
    "non-UTF-8 bytes": (HEAD + "system_prompt: caf\xe9\n", 3, "not UTF-8 text (byte 0xe9 at column 19)"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_yaml_is_one_error_line_naming_file_and_line(tmp_path: Path, run_cli, case: str):
    text, line, words = HOSTILE[case]
    spec = tmp_path / "tunewise.yaml"
    spec.write_bytes(text.encode("latin-1") if case == "non-UTF-8 bytes" else text.encode())
    (tmp_path / "x.jsonl").write_text("")
    code, out, err = run_cli("data", "check", tmp_path / "x.jsonl", "--spec", spec)
    assert code == 1 and out == ""
    assert "Traceback" not in err
    first = err.splitlines()[0]
    assert first.startswith("error: ") and f"{spec}: line {line}: " in first and words in first
    assert [x for x in err.splitlines()[1:] if x.strip()] == [err.splitlines()[1]]  # then one hint line
    assert err.splitlines()[1].lstrip().startswith("hint: ")


def test_alias_bomb_is_refused_within_the_budget(monkeypatch):
    """The refusal comes from counting, not from luck: at most the budget plus one alias's worth of values is
    composed before the error, however many the document would expand to (10**9 here)."""
    from tunewise import spec as spec_module

    seen: list[int] = []
    dispose = spec_module.SpecYamlLoader.dispose

    def record(self):
        seen.append(self.nodes_expanded)
        dispose(self)

    monkeypatch.setattr(spec_module.SpecYamlLoader, "dispose", record)
    with pytest.raises(ConfigError, match=f"at most {spec_module.ALIAS_BUDGET:,} values"):
        parse_spec(HEAD + _laughs(9))
    # Lists of level k hold 1 + 10 * (those of level k - 1) values (11, 111, 1111): levels 1 and 2 add 110 and
    # 1,110, and the 8th alias of level 2 on line 6 takes the total to 10,108. Composed by then: those plus the
    # document's own 30-odd nodes, where a walk of the expanded document would visit about 10**9.
    assert len(seen) == 1 and 10_108 < seen[0] < 10_108 + 40


def test_aliases_within_the_budget_still_work():
    text = HEAD.replace("data: {train: x.jsonl}", "data: {train: &files [a.jsonl, b.jsonl], eval: *files}")
    text += "contract: {type: json, schema: {type: object, examples: [&ex {a: 1}, *ex, *ex]}}\n"
    spec = parse_spec(text)
    assert spec.data.eval == spec.data.train == ["a.jsonl", "b.jsonl"]
    assert spec.contract.json_schema["examples"] == [{"a": 1}] * 3


# --- regex contracts: what constrained decoding cannot enforce is a spec error -----------------------------

REFUSED_PATTERNS = {
    "((": "does not compile",
    r"(a)\1": r"a backreference \1 at position 3",
    r"(?P<id>TCK)-(?P=id)": "a named group",
    r"\bTCK-\d+": r"a word boundary \b",
    r"TCK-\d+(?=\.)": "a lookahead",
    r"(?i)tck-\d+": "an inline flag (?i)",
    r"\d++": "a possessive quantifier",
    r"[]x]": "a ']' first in the character class",
    r"x{,3}": "{,n}",
}
ACCEPTED_PATTERNS = [
    r"TCK-\d{4,6}",
    r"(?:yes|no)",
    r"[A-Z]{3}-[0-9]+\.?",
    r"[\]x]",
    r"\(\?i\)",
    r"[(?i)\b]",
    r"a+?",
]


@pytest.mark.parametrize("pattern", list(REFUSED_PATTERNS))
def test_regex_contract_the_grammar_cannot_enforce_is_an_error_at_its_line(
    tmp_path: Path, run_cli, pattern: str
):
    spec = tmp_path / "tunewise.yaml"
    quoted = pattern.replace("'", "''")
    spec.write_text(
        MINIMAL.replace(
            "{type: label, labels: [positive, negative]}", f"\n  type: regex\n  pattern: '{quoted}'"
        )
    )
    (tmp_path / "x.jsonl").write_text("")
    code, out, err = run_cli("data", "check", tmp_path / "x.jsonl", "--spec", spec)
    assert code == 1 and out == "" and "Traceback" not in err
    problem = next(line for line in err.splitlines() if "contract.pattern" in line)
    assert problem.lstrip().startswith("- line 6: contract.pattern: ")  # the line of `pattern:`
    assert REFUSED_PATTERNS[pattern] in problem


@pytest.mark.parametrize("pattern", ACCEPTED_PATTERNS)
def test_regex_contract_the_grammar_can_enforce_loads(pattern: str):
    text = MINIMAL.replace("{type: label, labels: [positive, negative]}", "{type: regex, pattern: 'P'}")
    assert parse_spec(text.replace("'P'", "'" + pattern.replace("'", "''") + "'")).contract.pattern == pattern


def test_grammar_check_agrees_with_the_grammar_engine():
    """Every pattern the spec refuses, xgrammar refuses; every pattern it accepts, xgrammar compiles."""
    xgrammar = pytest.importorskip("xgrammar")
    for pattern in ACCEPTED_PATTERNS:
        xgrammar.Grammar.from_regex(pattern)
    for pattern in REFUSED_PATTERNS:
        with pytest.raises(Exception, match="Regex parsing error"):
            xgrammar.Grammar.from_regex(pattern)


def test_spec_file_past_the_size_limit_is_refused_unread(tmp_path: Path, run_cli):
    from tunewise.spec import MAX_SPEC_BYTES

    spec = tmp_path / "tunewise.yaml"
    spec.write_text(HEAD + "system_prompt: '" + "x" * MAX_SPEC_BYTES + "'\n")
    code, out, err = run_cli("data", "check", tmp_path / "x.jsonl", "--spec", spec)
    assert code == 1 and out == "" and "Traceback" not in err
    assert err.startswith(f"error: {spec}: the file is larger than 1 MiB")
    spec.write_text(HEAD + "system_prompt: '" + "x" * (MAX_SPEC_BYTES - 200) + "'\n")  # just under: loads
    from tunewise.spec import load_spec

    assert len(load_spec(spec).system_prompt) == MAX_SPEC_BYTES - 200
