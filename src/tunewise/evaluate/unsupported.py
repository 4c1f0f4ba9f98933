"""Unsupported-content rate: a HEURISTIC stand-in for the guide's "hallucination rate".

The guide asks that the share of outputs "containing fabricated facts" not rise after fine-tuning. Judging facts
needs a judge; this module does something cheaper, deterministic and explainable: it extracts the *values* an
output asserts and flags the output when one of them appears neither in the input nor in the reference. It is
labelled "unsupported content (heuristic)" wherever it is shown, because it both misses fabrications that use
no such value and flags legitimate values the model derived (a sum, a date written differently).

What counts as a value (see `extract_values`):

1. **Identifiers**: tokens of letters, digits, `-` and `_` holding at least one letter and one digit, and
   either a capital letter or a letter touching a digit (`TCK-12345`, `ORD-998`, `A1B2`, `3pm`; not the
   compound word `12-day`, whose `12` is a number). Compared case-insensitively with the source's tokens,
   or as a phrase of it (`TCK 12345`).
2. **Numbers**: digit runs with `.`/`,` separators not inside an identifier (`42`, `3.50`, `1,000`).
   Normalized (thousands commas dropped, trailing decimal zeros dropped: `1,000.50` -> `1000.5`) and compared
   with the numbers of the source, normalized the same way.
3. **Names**: runs of two or more capitalized words (`Jane Doe`, `Acme Bank`), after dropping a leading
   function word (`The`, `A`, `My`, ...). Compared as normalized phrases contained in the source text.
4. **JSON leaves**, when the whole output (or its lenient parse) is JSON: every number leaf (as 2.), every
   string leaf of at most five words (as a phrase contained in the source; `"4"` is also compared as a
   number). Longer string leaves are prose: values are extracted from them as from text (1.-3.). Booleans,
   null and keys are not values (keys are fixed by the schema).

Normalization for phrases: case-folded words of letters and digits joined by single spaces (punctuation, `_`
and `-` are separators), matched on word boundaries.
The source is the input plus the reference (plus the reference's JSON leaf strings, so escapes do not hide a
match) plus any `allowed` strings the caller adds (the contract's labels: answering with a label invents
nothing).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

from tunewise.evaluate.scorers import parse_json_lenient

__all__ = ["extract_values", "is_unsupported", "unsupported_values"]

_IDENT = re.compile(r"(?<![\w-])(?=[\w-]*[A-Za-z])(?=[\w-]*\d)[A-Za-z0-9]+(?:[-_][A-Za-z0-9]+)*(?![\w-])")
_NUMBER = re.compile(r"(?<![\w.,])\d+(?:[.,]\d+)*")
_NAME = re.compile(r"\b[A-Z][a-z][a-zA-Z'&]*(?:\s+(?:of\s+|de\s+|van\s+)?[A-Z][a-z][a-zA-Z'&]*)+\b")
# Capitalized at the start of a sentence, not because they are names.
_FUNCTION_WORDS = {
    "a", "an", "the", "my", "your", "our", "their", "his", "her", "its", "this", "that", "these", "those",
    "i", "we", "you", "he", "she", "it", "they", "dear", "hi", "hello", "please", "thank", "thanks", "yes", "no",
    "if", "when", "in", "on", "at", "for", "to", "from", "and", "or", "but", "so", "is", "are", "was", "can",
}  # fmt: skip
_SHORT_STRING_WORDS = 5


def _phrase(text: str) -> str:
    """Case-folded words (letters and digits) joined by one space: punctuation never hides a match.

    >>> _phrase("At 7 PM, Jane_Doe's")
    'at 7 pm jane doe s'
    """
    return " ".join(re.findall(r"[^\W_]+", text.casefold()))


def _number(text: str) -> str:
    """Normalize a number token: `1,000.50` -> `1000.5`, `7.0` -> `7`.

    >>> _number("1,000.50"), _number("7.0"), _number("007")
    ('1000.5', '7', '7')
    """
    try:
        return format(Decimal(text.replace(",", "")).normalize(), "f")
    except InvalidOperation:
        return text


def _is_code(token: str) -> bool:
    """An identifier has a capital letter or a letter touching a digit; `12-day` is a compound word.

    >>> _is_code("TCK-12345"), _is_code("a1b2"), _is_code("3pm"), _is_code("12-day")
    (True, True, True, False)
    """
    return any(ch.isupper() for ch in token) or re.search(r"[A-Za-z]\d|\d[A-Za-z]", token) is not None


def _text_values(text: str) -> list[tuple[str, str]]:
    values: list[tuple[str, str]] = []
    idents = [m for m in _IDENT.finditer(text) if _is_code(m.group(0))]
    values += [("identifier", m.group(0)) for m in idents]
    # Numbers inside identifiers belong to the identifier: blank them out before looking for numbers.
    rest = text
    for m in reversed(idents):
        rest = rest[: m.start()] + " " * (m.end() - m.start()) + rest[m.end() :]
    values += [("number", m.group(0)) for m in _NUMBER.finditer(rest)]
    for m in _NAME.finditer(text):
        words = m.group(0).split()
        while words and words[0].casefold() in _FUNCTION_WORDS:
            words = words[1:]
        if len(words) >= 2:
            values.append(("name", " ".join(words)))
    return values


def _json_values(value: Any) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [v for sub in value.values() for v in _json_values(sub)]
    if isinstance(value, list):
        return [v for sub in value for v in _json_values(sub)]
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, (int, float)):
        return [("number", repr(value))]
    text = str(value).strip()
    if not text:
        return []
    if len(text.split()) > _SHORT_STRING_WORDS:
        return _text_values(text)
    return [("string", text)]


def extract_values(output: str) -> list[tuple[str, str]]:
    """The (kind, value) pairs the heuristic checks: identifier, number, name, or string (a JSON leaf).

    >>> extract_values("Refund for ORD-998 of 1,200 EUR approved by Jane Doe.")
    [('identifier', 'ORD-998'), ('number', '1,200'), ('name', 'Jane Doe')]
    >>> extract_values('{"ticket": "TCK-12345", "priority": 2, "urgent": true}')
    [('string', 'TCK-12345'), ('number', '2')]
    """
    stripped = output.strip()
    if stripped[:1] in "{[" or "```" in stripped:
        found, value = parse_json_lenient(stripped)
        if found and isinstance(value, (dict, list)):
            return _json_values(value)
    return _text_values(output)


def _source_index(sources: Iterable[str]) -> tuple[str, set[str], set[str]]:
    texts = []
    for source in sources:
        texts.append(source)
        found, value = parse_json_lenient(source) if source.strip()[:1] in "{[" else (False, None)
        if found:
            texts += [v for _, v in _json_values(value)]
    joined = "\n".join(texts)
    idents = {m.group(0).casefold() for m in _IDENT.finditer(joined)}
    numbers = {_number(m.group(0)) for m in _NUMBER.finditer(joined)}
    # Numbers inside identifiers count as present too (an output may quote "12345" from "TCK-12345").
    numbers |= {_number(d) for ident in idents for d in re.findall(r"\d+", ident)}
    return " " + _phrase(joined) + " ", idents, numbers


def unsupported_values(
    output: str, input: str, reference: str = "", allowed: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """The values of `output` found neither in `input`, nor in `reference`, nor among `allowed` strings.

    >>> unsupported_values("Your order ORD-998 ships in 3 days.", "Where is order ORD-998?", "")
    [('number', '3')]
    >>> unsupported_values("Ticket TCK-1 escalated to Mark Twain.", "ticket tck-1 is stuck", "")
    [('name', 'Mark Twain')]
    >>> unsupported_values('{"people": "4", "time": "7 pm"}', "table for 4 at 7 PM", '{"people":"4"}')
    []
    """
    phrases, idents, numbers = _source_index([input, reference, *allowed])
    missing = []
    for kind, value in extract_values(output):
        if kind == "identifier":
            ok = value.casefold() in idents or f" {_phrase(value)} " in phrases
        elif kind == "number":
            ok = _number(value) in numbers
        else:
            norm = _phrase(value)
            if _NUMBER.fullmatch(value.strip()):
                ok = _number(value.strip()) in numbers
            else:
                ok = not norm or f" {norm} " in phrases
        if not ok:
            missing.append((kind, value))
    return missing


def is_unsupported(output: str, input: str, reference: str = "", allowed: Iterable[str] = ()) -> bool:
    """True when the output carries at least one value found neither in the input nor in the reference.

    >>> is_unsupported("The balance is 120.00 dollars.", "Why is my balance 120?", "")
    False
    >>> is_unsupported("Call Acme Support at 555-0100.", "My card is blocked", "")
    True
    """
    return bool(unsupported_values(output, input, reference, allowed))
