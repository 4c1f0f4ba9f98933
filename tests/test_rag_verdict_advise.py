"""`tunewise advise`: when it says RAG (or RAG + fine-tuning), it prints the commands that measure it."""

from __future__ import annotations

import json

from tunewise.decide.advisor import Answers, advise


def test_advice_rag_carries_the_measuring_commands():
    advice = advise(Answers(problem="knowledge"))
    assert advice.recommendation == "RAG"
    assert "tunewise demo --task knowledge" in advice.commands[0]
    assert any(c.startswith("tunewise eval --arms zero-shot,rag ") for c in advice.commands)
    both = advise(
        Answers(problem="both", format_only=False, facts_change_often=False, prompt_tested=True,
                prompt_consistency=0.8, queries_per_day=2000, validated_examples=400, can_judge_quality=True,
                team_size=30)
    )  # fmt: skip
    assert both.recommendation == "RAG + fine-tuning" and both.commands == advice.commands
    tuned = advise(
        Answers(problem="behaviour", format_only=False, facts_change_often=False, prompt_tested=True,
                prompt_consistency=0.8, queries_per_day=2000, validated_examples=400, can_judge_quality=True)
    )  # fmt: skip
    assert tuned.recommendation == "fine-tuning" and tuned.commands == []


def test_advise_cli_prints_the_commands(run_cli):
    code, out, _ = run_cli("advise", "--problem", "knowledge", "--no-input")
    assert code == 0
    assert out.splitlines()[0] == "recommendation: RAG"
    lines = out[out.index("measure it with tunewise:") :].splitlines()
    assert "  $ tunewise demo --task knowledge   # see it work first" in lines[1]
    assert any("knowledge: {docs: docs/}" in line for line in lines)
    assert any(
        line.startswith(
            "  $ tunewise run   # with evaluation.arms: [zero-shot, rag, fine-tuned, rag+fine-tuned]"
        )
        for line in lines
    )
    code, out, _ = run_cli("advise", "--problem", "knowledge", "--no-input", "--json")
    assert json.loads(out)["commands"][2].startswith("tunewise eval --arms zero-shot,rag")
    code, out, _ = run_cli("advise", "--problem", "behaviour", "--prompt-not-tested", "--no-input")
    assert "measure it with tunewise:" not in out
