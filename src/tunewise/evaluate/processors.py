"""Grammar masks and the JSON loop guard as `transformers.LogitsProcessor`s, for batched `model.generate`.

`LocalEngine` (evaluate/engine.py) applies both inside its own decode loop; these processors give transformers'
`generate` the same behaviour, so evaluation can use either (evaluate/batched.py):

- `GrammarProcessor` masks each constrained row's logits with its xgrammar state (`RowMatchers`, as in
  evaluate/constrain.py), advancing the state with the token the row chose at the previous step;
- `JsonGuardProcessor` follows each guarded row's JSON (`RowGuards`, evaluate/loopguard.py). It refuses a
  token the guard refuses (a "," in a sealed container, a wrong closing bracket) by masking it; when a row
  starts repeating itself it cannot take tokens back inside `generate`, so it ends the row (forces its stop
  token) and records where the row must resume: the caller generates again from the prompt plus the kept
  tokens, with the sealed tracker (`GenerateEngine` does).

Rows are the rows of `generate`'s batch; `prompt_len` is the padded prompt width, so the tokens a row has
generated are `input_ids[row, prompt_len:]`. A row that has emitted a stop token is finished: `generate` pads
it from then on and both processors leave it alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from transformers import LogitsProcessor

from tunewise.evaluate.constrain import Grammar, GrammarBackend, RowMatchers
from tunewise.evaluate.loopguard import JsonTracker, RowGuards

# Greedy refusal re-chooses the best remaining token at most this many times per step (as LocalEngine does);
# sampled rows mask the refused tokens among this many most likely ones.
_MAX_REFUSALS = 64


class _Rows:
    """Which rows have finished (emitted a stop token), read from the ids `generate` passes each step."""

    def __init__(self, prompt_len: int, stop_token_ids: frozenset[int]):
        self.prompt_len = prompt_len
        self.stop = stop_token_ids
        self.finished: set[int] = set()

    def new_tokens(self, input_ids: Any) -> list[tuple[int, int, int]]:
        """(row, token, tokens generated so far) for each row still generating that chose a token last step."""
        generated = input_ids.shape[1] - self.prompt_len
        if generated <= 0:
            return []
        out = []
        for row, token in enumerate(input_ids[:, -1].tolist()):
            if row in self.finished:
                continue
            out.append((row, token, generated))
            if token in self.stop:
                self.finished.add(row)
        return out


class GrammarProcessor(LogitsProcessor):
    """Each constrained row's logits masked to the tokens its grammar allows (rows: `generate`'s batch rows)."""

    def __init__(
        self,
        backend: GrammarBackend,
        grammars: Mapping[int, Grammar],
        prompt_len: int,
        stop_token_ids: frozenset[int],
    ):
        self.matchers = RowMatchers(backend, grammars)
        self.rows = _Rows(prompt_len, stop_token_ids)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        for row, token, _ in self.rows.new_tokens(input_ids):
            self.matchers.accept(row, token)
        # A finished row's matcher has accepted its stop token: -1 leaves its (ignored) logits unmasked.
        rows = [-1 if r in self.rows.finished else r for r in range(scores.shape[0])]
        return self.matchers.mask_(scores, rows)


class JsonGuardProcessor(LogitsProcessor):
    """The JSON loop guard over `generate` (see the module docstring).

    After `generate` returns, `resume[row]` is the number of the row's tokens to keep (counted from the start of
    its answer, tokens of earlier calls included) when it was ended for repeating itself, `generated[row]` holds
    them, and `guards.trackers[row]` is already rebuilt over them with the container sealed.
    """

    def __init__(
        self,
        rows: Sequence[int],
        piece: Callable[[int], str],
        prompt_len: int,
        stop_token_ids: frozenset[int],
        max_new_tokens: int,
        sampling: bool,
        end_token: int,
        resumed: Mapping[int, tuple[JsonTracker, list[int]]] | None = None,
    ):
        self.guards = RowGuards(list(rows), piece)
        self.generated: dict[int, list[int]] = {r: [] for r in rows}
        # A resumed row goes on from its rebuilt tracker and the tokens it kept (the tracker counts them).
        for row, (tracker, kept) in (resumed or {}).items():
            self.guards.trackers[row] = tracker
            self.generated[row] = list(kept)
        self.rows = _Rows(prompt_len, stop_token_ids)
        self.max_new_tokens = max_new_tokens  # of this generate call
        self.sampling = sampling
        self.end_token = end_token
        self.used: dict[int, int] = {}  # tokens of this call a resumed row had generated when it was ended
        self.resume: dict[int, int] = {}

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        for row, token, count in self.rows.new_tokens(input_ids):
            if row not in self.guards or row in self.resume:
                continue
            self.generated[row].append(token)
            # As in LocalEngine: a stop token ends the row, and the last allowed token is never taken back.
            if token in self.rows.stop or count >= self.max_new_tokens:
                continue
            back = self.guards.accept(row, self.generated[row])
            if back is not None:
                self.resume[row] = back
                self.used[row] = count
                del self.generated[row][back:]
        for row in range(scores.shape[0]):
            if row in self.rows.finished or row not in self.guards:
                continue
            if row in self.resume:
                # End the row now; the caller resumes it from its kept tokens.
                end = scores[row, self.end_token].clone()
                scores[row] = float("-inf")
                scores[row, self.end_token] = end if end > float("-inf") else 0.0
                continue
            self._refuse(row, scores[row])
        return scores

    def _refuse(self, row: int, logits: Any) -> None:
        """Mask the tokens the guard refuses: the best ones until one is allowed (greedy, the same choice as
        refusing and choosing again), or every refused one among the most likely (sampling)."""
        if self.sampling:
            for token in logits.topk(_MAX_REFUSALS).indices.tolist():
                if self.guards.refuses(row, token):
                    logits[token] = float("-inf")
            return
        for _ in range(_MAX_REFUSALS):
            token = int(logits.argmax())
            if not self.guards.refuses(row, token):
                return
            logits[token] = float("-inf")
