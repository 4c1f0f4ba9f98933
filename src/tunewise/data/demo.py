"""The built-in demo task: support tickets in, a compact JSON triage reply out.

It follows the guide's worked example ("What Good Fine-Tuning Looks Like"): a support team whose prompted model
breaks the reply format and drops the required reference number. Each example is a customer ticket (varied
tone, products, order numbers, dates, occasional typos, the ticket's reference `TCK-nnnnn` somewhere in it)
and the ideal reply, one line of JSON with sorted keys::

    {"category":"delivery","priority":"high","reference":"TCK-48213","reply":"..."}

Labels are learnable from the text but not by keyword alone: every category has several phrasings, tickets
carry context sentences that mention another category's words (a refund ticket says the parcel arrived), and
urgency cues include negations ("not urgent"). The reply is a fixed brand-voice sentence pattern per category
and priority, so a fine-tuned model can learn it exactly and consistency can be measured.

Everything is generated from a seeded `random.Random`: the same seed gives the same bytes on every machine,
and `demo_examples(n, seed)` is a prefix of `demo_examples(m, seed)` for n < m.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tunewise.fileio import atomic_write_text
from tunewise.project import SPEC_NAME

CATEGORIES = ("billing", "delivery", "account", "technical", "refund")
PRIORITIES = ("low", "normal", "high", "urgent")
REFERENCE_PATTERN = r"^TCK-[0-9]{5}$"

DEMO_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Support ticket triage reply",
    "type": "object",
    "properties": {
        "category": {"enum": list(CATEGORIES)},
        "priority": {"enum": list(PRIORITIES)},
        "reference": {"type": "string", "pattern": REFERENCE_PATTERN},
        "reply": {"type": "string", "minLength": 20, "maxLength": 200},
    },
    "required": ["category", "priority", "reference", "reply"],
    "additionalProperties": False,
}

DEMO_SYSTEM_PROMPT = """\
You are the support triage assistant of Brightline, a consumer electronics shop.
Read the customer's ticket and answer with ONE line of JSON and nothing else, with exactly these keys:
{"category":"...","priority":"...","reference":"TCK-12345","reply":"..."}
category, one of:
- billing: charges, invoices, payment methods, subscription prices
- delivery: parcels that are late, lost, damaged in transit or sent to the wrong address
- account: login, password, email address, two-factor codes, closing an account
- technical: a product or the app crashes, shows an error, will not pair, sync or turn on
- refund: the customer wants their money back or to return an item
priority, one of:
- urgent: the customer is blocked right now or asks for action today/immediately
- high: a repeated contact, earlier contact did not help, or a firm deadline this week
- low: the customer says there is no rush or it is not urgent
- normal: everything else
reference: the ticket's reference number exactly as written in the ticket (TCK- and five digits).
reply: formal, in this form: "Thank you for contacting Brightline about <reference>. Our <team> will reply \
within <time>." with team billing team, delivery team, account security team, technical support team or \
returns team (by category) and time four hours (urgent), one business day (high), two business days (normal) \
or five business days (low). No emojis, no casual language."""

# --- the reply: fixed brand voice -------------------------------------------------------------------------

_TEAM = {
    "billing": "Our billing team",
    "delivery": "Our delivery team",
    "account": "Our account security team",
    "technical": "Our technical support team",
    "refund": "Our returns team",
}
_WHEN = {
    "low": "within five business days",
    "normal": "within two business days",
    "high": "within one business day",
    "urgent": "within four hours",
}


def demo_reply(category: str, priority: str, reference: str) -> str:
    """The ideal brand-voice reply: formal, one sentence pair, always naming the reference.

    >>> demo_reply("refund", "urgent", "TCK-48213")
    'Thank you for contacting Brightline about TCK-48213. Our returns team will reply within four hours.'
    """
    return f"Thank you for contacting Brightline about {reference}. {_TEAM[category]} will reply {_WHEN[priority]}."


def demo_completion(category: str, priority: str, reference: str) -> str:
    """The assistant message: compact JSON with sorted keys, the exact bytes a model must learn to emit.

    >>> demo_completion("account", "low", "TCK-00042")[:60]
    '{"category":"account","priority":"low","reference":"TCK-0004'
    """
    reply = {
        "category": category,
        "priority": priority,
        "reference": reference,
        "reply": demo_reply(category, priority, reference),
    }
    return json.dumps(reply, sort_keys=True, separators=(",", ":"))


# --- the ticket: varied text ------------------------------------------------------------------------------

_PRODUCTS = (
    "Aurora X2 headphones",
    "Nimbus thermostat",
    "Velo e-bike charger",
    "Lumen desk lamp",
    "Orbit fitness tracker",
    "Cascade coffee maker",
    "Pico mesh router",
    "Halo smart speaker",
    "Tidal robot vacuum",
    "Ember air fryer",
)
_APPS = ("the Brightline app", "the mobile app", "your website")
_MONTHS = ("Jan", "Feb", "March", "April", "May", "June", "July", "Aug", "Sept", "Oct", "Nov", "Dec")
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

# Several phrasings per category. Placeholders: {product} {order} {date} {amount} {app} {code}.
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "billing": (
        "I was charged twice for order {order}, {amount} each time.",
        "My invoice for the {product} shows {amount} but the listed price was lower.",
        "Your site keeps declining my card when I try to update my payment method.",
        "The monthly subscription went up to {amount} without any notice.",
        "There's a charge of {amount} on my statement from {date} I don't recognise.",
        "Can you send a VAT invoice for order {order}? The one I got has the wrong company name.",
    ),
    "delivery": (
        "Order {order} was supposed to arrive on {date} and it still hasn't shown up.",
        "Tracking for my {product} hasn't moved in six days.",
        "The courier marked order {order} as delivered but there is nothing at my door.",
        "My {product} arrived with the box crushed and the unit rattling inside.",
        "The parcel went to my old address even though I changed it before ordering.",
        "Only half of order {order} arrived; the {product} is missing from the box.",
    ),
    "account": (
        "I can't log in, the password reset email never arrives.",
        "I'm locked out of my account after too many attempts.",
        "I need to change the email address on my account, the old one no longer works.",
        "The two-factor code from {app} is always rejected.",
        "Please close my account and delete my personal data.",
        "Someone changed my account password on {date}, it wasn't me.",
    ),
    "technical": (
        "My {product} won't turn on since the update on {date}.",
        "{app} crashes every time I open the settings page.",
        "The {product} shows error {code} and then restarts.",
        "My {product} won't pair with my phone over bluetooth anymore.",
        "The {product} keeps disconnecting from wifi every few minutes.",
        "The {product} doesn't sync with {app}, the data stops at {date}.",
    ),
    "refund": (
        "I'd like a refund for order {order}, the {product} isn't what I expected.",
        "I sent the {product} back on {date} and still haven't got my money back.",
        "Please refund the {amount} for the cancelled order {order}.",
        "I want to return the {product}, it is within the 30 days. How do I get my money back?",
        "The {product} was faulty, I want my money back rather than a replacement.",
        "You approved my return for order {order} but the refund of {amount} hasn't appeared.",
    ),
}

# Context that mentions other categories' words without changing what the ticket is about: a keyword
# classifier is fooled by these; a model that reads the request is not.
_DISTRACTORS: dict[str, tuple[str, ...]] = {
    "billing": (
        "The delivery itself was fine.",
        "I can log in without problems.",
        "I don't want a refund, just the correct amount.",
    ),
    "delivery": (
        "I paid for express shipping with my card.",
        "The invoice came by email straight away.",
        "I don't want a refund, I just want the parcel.",
    ),
    "account": (
        "I have an order on the way, {order}.",
        "My last invoice was paid on time.",
        "The {product} itself works fine.",
    ),
    "technical": (
        "It was delivered on time and the invoice is fine.",
        "I don't want to return it, I just want it to work.",
        "I already logged out and back in to my account.",
    ),
    "refund": (
        "The parcel arrived on {date}.",
        "I paid with my credit card.",
        "I tried to fix it with the troubleshooting guide, no luck.",
    ),
}

# Urgency cues. "not urgent" sits in `low` on purpose: the word "urgent" alone does not decide the priority.
_CUES: dict[str, tuple[str, ...]] = {
    "low": (
        "No rush, whenever you get a chance.",
        "Not urgent, just letting you know.",
        "It's not urgent at all.",
        "Just a quick question, no hurry.",
        "Not a big deal, reply when you can.",
    ),
    "normal": ("", "", "Could you look into it?", "Please advise.", "Can you help?"),
    "high": (
        "This is the second time I'm writing about this.",
        "Still not resolved after a week, I'm really disappointed.",
        "I need this sorted before Friday.",
        "I already called twice and nothing happened.",
        "Please don't make me ask a third time.",
    ),
    "urgent": (
        "URGENT: I need this sorted today!",
        "Please act immediately, I can't wait any longer.",
        "This is urgent, I need it resolved today.",
        "I need an answer ASAP, today if possible.",
        "Please escalate this right away, it cannot wait.",
    ),
}

_GREETINGS = ("", "", "Hi,", "Hello,", "Hello team,", "Dear Support,", "hey", "Good morning,")
_SIGNOFFS = ("", "", "", "Thanks, Maria", "Regards, J. Okafor", "Cheers, Tom", "Best, Priya", "- Lena")
_ANGRY = (" Very frustrating.", " This is unacceptable!", " Honestly not impressed.")

# Where the reference goes and how it is phrased. `{ref}` is the reference itself.
_REF_LEAD = ("Ticket {ref}", "Re: [{ref}]", "Subject: {ref}", "[{ref}]", "Ref: {ref}")
_REF_INLINE = ("(ref {ref})", "- ticket {ref} -", "under {ref}")
_REF_TAIL = (
    "Reference number: {ref}",
    "My ticket number is {ref}.",
    "Ticket: {ref}",
    "ref. {ref}",
    "This is about ticket {ref}.",
    "Case {ref}",
)


def _typo(text: str, rng: random.Random) -> str:
    """Swap two adjacent letters of one longer word, as a hurried customer would; numbers are left alone.

    >>> _typo("Order ORD-123 never arrived", random.Random(1))
    'Order ORD-123 nveer arrived'
    """
    words = [m for m in re.finditer(r"\b[a-z]{5,}\b", text)]
    if not words:
        return text
    m = rng.choice(words)
    i = m.start() + rng.randrange(1, len(m.group()) - 2)
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :]


def _fill(template: str, rng: random.Random, product: str) -> str:
    day = rng.randint(1, 28)
    date = rng.choice(
        (
            f"{day} {rng.choice(_MONTHS)}",
            f"2026-{rng.randint(1, 10):02d}-{day:02d}",
            rng.choice(_WEEKDAYS),
            f"{rng.choice(_MONTHS)} {day}",
        )
    )
    order = rng.choice((f"ORD-{rng.randint(100000, 999999)}", f"#{rng.randint(1000000, 9999999)}"))
    amount = rng.choice((f"${rng.randint(5, 400)}.{rng.randint(0, 99):02d}", f"EUR {rng.randint(5, 400)}"))
    code = rng.choice(
        (f"E{rng.randint(10, 99)}", f"0x{rng.randint(16, 255):02X}", f"{rng.randint(100, 999)}")
    )
    return template.format(
        product=product, order=order, date=date, amount=amount, app=rng.choice(_APPS), code=code
    )


def _ticket(category: str, priority: str, reference: str, rng: random.Random) -> str:
    product = rng.choice(_PRODUCTS)
    complaint = _fill(rng.choice(_TEMPLATES[category]), rng, product)
    # Where the reference goes: a subject line (30%), inside the complaint (20%) or after the body (50%).
    placement = rng.random()
    if 0.3 <= placement < 0.5:
        # Inside the complaint itself, before its final punctuation.
        complaint = f"{complaint[:-1]} {rng.choice(_REF_INLINE).format(ref=reference)}{complaint[-1]}"
    body = [complaint]
    if rng.random() < 0.45:
        body.append(_fill(rng.choice(_DISTRACTORS[category]), rng, product))
        if rng.random() < 0.5:
            body.reverse()  # the context sometimes comes first, so "first sentence = topic" is not a rule
    cue = rng.choice(_CUES[priority])
    if cue:
        # Cues lead or trail: position carries no information.
        body.insert(0 if rng.random() < 0.3 else len(body), cue)
    if priority in ("high", "urgent") and rng.random() < 0.3:
        body[-1] += rng.choice(_ANGRY)
    if placement >= 0.5:
        body.append(rng.choice(_REF_TAIL).format(ref=reference))

    text = " ".join(body)
    if rng.random() < 0.2:
        text = _typo(text, rng)
    if rng.random() < 0.1:
        # The all-lowercase typist; the reference stays exact so that copying it is always right.
        text = text.lower().replace(reference.lower(), reference)
    sep = "\n" if rng.random() < 0.5 else " "
    ticket = sep.join(part for part in (rng.choice(_GREETINGS), text, rng.choice(_SIGNOFFS)) if part)
    if placement < 0.3:
        ticket = f"{rng.choice(_REF_LEAD).format(ref=reference)}\n{ticket}"  # a subject line above the rest
    return ticket


# The demo trains on two CPU cores, so examples stay short: SmolLM2's tokenizer spends one token per digit and
# about one per word or punctuation mark, plus up to ~15 for typos and rare words (measured on 3,000 tickets).
# At most 56 by this count keeps a ticket under ~68 tokens and, with the 50-token reply, an example under 120.
_MAX_TICKET_PIECES = 56


def _rough_tokens(text: str) -> int:
    """Digits, words and punctuation marks: a tokenizer-free lower bound on the token count.

    >>> _rough_tokens("Order #123 late!")
    7
    """
    return len(re.findall(r"[0-9]|[A-Za-z]+|[^\sA-Za-z0-9]", text))


# Label blocks keep every prefix of the stream near balance: each block of 20 examples holds every category 4
# times and priorities 4 low / 6 normal / 5 high / 5 urgent (normal is the most common in a real queue).
_BLOCK_CATEGORIES = [c for c in CATEGORIES for _ in range(4)]
_BLOCK_PRIORITIES = ["low"] * 4 + ["normal"] * 6 + ["high"] * 5 + ["urgent"] * 5


MAX_DEMO_EXAMPLES = 90_000  # one unique five-digit reference each, 10000..99999


def _stream(seed: int) -> Iterator[tuple[str, str, str, str]]:
    """(ticket, category, priority, reference) for ever; every reference, hence every ticket text, unique."""
    rng = random.Random(seed)
    # No leading zero, as from a real ticket counter; sampling without replacement keeps references unique, and
    # since every ticket contains its reference, no two tickets (train or eval) can share a text.
    references = iter(rng.sample(range(10000, 100000), MAX_DEMO_EXAMPLES))
    while True:
        cats, pris = list(_BLOCK_CATEGORIES), list(_BLOCK_PRIORITIES)
        rng.shuffle(cats)
        rng.shuffle(pris)
        for category, priority in zip(cats, pris, strict=True):
            reference = f"TCK-{next(references)}"
            ticket = _ticket(category, priority, reference, rng)
            while _rough_tokens(ticket) > _MAX_TICKET_PIECES:
                ticket = _ticket(category, priority, reference, rng)
            yield ticket, category, priority, reference


def demo_examples(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` demo examples in the normalized chat form (user ticket, assistant JSON reply).

    >>> ex = demo_examples(1, seed=0)[0]
    >>> [m["role"] for m in ex["messages"]]
    ['user', 'assistant']
    >>> json.loads(ex["messages"][1]["content"])["reference"] in ex["messages"][0]["content"]
    True
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n > MAX_DEMO_EXAMPLES:
        raise ValueError(f"the demo generator makes at most {MAX_DEMO_EXAMPLES:,} examples, got n={n:,}")
    out = []
    for ticket, category, priority, reference in itertools.islice(_stream(seed), n):
        out.append(
            {
                "messages": [
                    {"role": "user", "content": ticket},
                    {"role": "assistant", "content": demo_completion(category, priority, reference)},
                ]
            }
        )
    return out


# --- the demo project -------------------------------------------------------------------------------------


class _SpecDumper(yaml.SafeDumper):
    """Multi-line strings as `|` blocks, so the system prompt in tunewise.yaml reads as written."""


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_SpecDumper.add_representer(str, _str_representer)


def _demo_spec_yaml() -> str:
    spec = {
        "task": {
            "name": "support-ticket-triage",
            "target": (
                "Given a customer support ticket, reply with one line of JSON holding the category, the "
                "priority, the ticket's reference number and a short formal reply that names it."
            ),
        },
        "contract": {"type": "json", "schema": DEMO_SCHEMA},
        "system_prompt": DEMO_SYSTEM_PROMPT,
        "data": {"train": "data/train.jsonl", "eval": "data/eval.jsonl"},
        "model": {"base": "embedded:smollm2-135m-instruct"},
        "method": "lora",
        # Sized to finish within 15 minutes on 2 CPU cores: 3 consistency samples instead of the default 5, the
        # retrieved arm left out (add `retrieved` to compare it too), and one schema-constrained arm, few-shot's,
        # named explicitly (`constrained: auto` would add zero-shot's as well, whose unguided answers run to the
        # token limit: about 2 s each here).
        "evaluation": {
            "arms": ["zero-shot", "few-shot", "few-shot+constrained", "fine-tuned"],
            "constrained": False,
            "few_shot_k": 3,
            "consistency_samples": 3,
        },
        "economics": {
            "queries_per_day": 500,
            "platforms": ["together"],
            "pricing_file": "prices.yaml",
            "value_per_accuracy_point": 5.0,
        },
    }
    header = (
        "# tunewise demo project: support-ticket triage, after the worked example in docs/guide.md.\n"
        "# Written by `tunewise.data.demo.write_demo_project`; edit freely.\n"
        "# economics.value_per_accuracy_point (dollars per accuracy point per month) is a demo assumption;\n"
        "# prices.yaml holds the per-token prices the practitioner's guide does not give, with their sources.\n"
    )
    return header + yaml.dump(spec, Dumper=_SpecDumper, sort_keys=False, allow_unicode=True, width=110)


DEMO_SPEC_YAML = _demo_spec_yaml()

# The guide gives no per-token inference prices. The demo prices a small open model served per token on
# Together at the rate a third-party summary reports for Llama 3.1 8B, which is labelled as such: the point
# of the demo is the arithmetic, and every figure in the report shows where it came from.
DEMO_PRICES_YAML = """\
# Demo price assumptions (the practitioner's guide, docs/guide.md, gives no per-token inference prices). Verify with the vendor.
entries:
  - id: together/lora-up-to-16b
    inference_input_per_million_tokens:
      value: 0.20
      source: "demo assumption: third-party summary of Together AI serverless pricing for Llama 3.1 8B (theneuralbase.com)"
      date: 2026-11
    inference_output_per_million_tokens:
      value: 0.60
      source: "demo assumption: third-party summary of Together AI serverless pricing for Llama 3.1 8B (theneuralbase.com)"
      date: 2026-11
"""


def _jsonl(examples: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(ex, ensure_ascii=False) + "\n" for ex in examples)


def write_demo_project(folder: str | Path, n_train: int = 300, n_eval: int = 50, seed: int = 0) -> Path:
    """Write the demo project (tunewise.yaml, prices.yaml, data/train.jsonl, data/eval.jsonl) into `folder`.

    Train and eval come from one stream of unique tickets, so no ticket text is shared between them.
    Each file is written atomically; existing files are replaced.
    """
    if n_train < 1 or n_eval < 1:
        raise ValueError(f"n_train and n_eval must be >= 1, got {n_train} and {n_eval}")
    folder = Path(folder)
    examples = demo_examples(n_train + n_eval, seed)
    atomic_write_text(folder / "data" / "train.jsonl", _jsonl(examples[:n_train]))
    atomic_write_text(folder / "data" / "eval.jsonl", _jsonl(examples[n_train:]))
    atomic_write_text(folder / SPEC_NAME, DEMO_SPEC_YAML)
    atomic_write_text(folder / "prices.yaml", DEMO_PRICES_YAML)
    return folder
