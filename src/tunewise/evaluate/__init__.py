"""Evaluation: every arm on the same held-out split, through the same scorers.

The model-free core lives here and imports neither torch nor transformers:

- `scorers`: answer parsing (strict and lenient), exact and field-level match, format compliance, label metrics,
  consistency across samples.
- `unsupported`: the unsupported-content heuristic (the guide's "hallucination rate").
- `stats`: Wilson and bootstrap intervals, the exact McNemar test, held-out size planning.
- `summary`: per-example records -> the evaluation summary JSON that `decide` and `report` read.

`engine` holds the local transformers generation engine; it imports torch only when called.
"""
