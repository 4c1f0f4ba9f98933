"""Redaction of captured traffic: e-mail addresses, phone numbers and card-like numbers are masked before a
request or an answer is stored, so the traffic store never holds them.

Card-like numbers are 13 to 19 digits (spaces or hyphens between groups allowed) that pass the Luhn check; they
are masked first, so that a card number is never mistaken for a phone number. Phone numbers are 9 to 15 digits
with the usual separators, or 8 and more after a leading '+': an order number of 6 digits or a date stays.
"""

from __future__ import annotations

import re
from collections.abc import Callable

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# Digits in groups: "4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111".
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
PHONE = re.compile(r"(?<![\w+])(\+)?(?:\(?\d[\d\s().-]{6,}\d)(?!\w)")

Redactor = Callable[[str], tuple[str, int]]


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies.

    >>> luhn_ok("4111111111111111"), luhn_ok("4111111111111112")
    (True, False)
    """
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def redact(text: str) -> tuple[str, int]:
    """`text` with e-mails, card-like numbers and phone numbers masked, and how many spans were masked.

    >>> redact("mail ann@example.com or call +44 20 7946 0958, card 4111 1111 1111 1111, order 123456")
    ('mail [EMAIL] or call [PHONE], card [CARD], order 123456', 3)
    >>> redact("ticket 4111111111111112 on 2024-01-15")  # fails Luhn, too long for a phone; a date
    ('ticket 4111111111111112 on 2024-01-15', 0)
    """
    count = 0

    def email(m: re.Match) -> str:
        nonlocal count
        count += 1
        return "[EMAIL]"

    def card(m: re.Match) -> str:
        nonlocal count
        digits = re.sub(r"\D", "", m.group(0))
        if not luhn_ok(digits):
            return m.group(0)
        count += 1
        return "[CARD]"

    def phone(m: re.Match) -> str:
        nonlocal count
        raw = m.group(0)
        digits = re.sub(r"\D", "", raw)
        plus = raw.startswith("+")
        if not (9 <= len(digits) <= 15 or (plus and 8 <= len(digits) <= 15)):
            return raw
        if not plus and re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw.strip()):
            return raw  # an ISO date
        count += 1
        return "[PHONE]"

    text = EMAIL.sub(email, text)
    text = CARD.sub(card, text)
    text = PHONE.sub(phone, text)
    return text, count


def no_redaction(text: str) -> tuple[str, int]:
    """The hook for an operator who turned redaction off (`--capture-raw`)."""
    return text, 0
