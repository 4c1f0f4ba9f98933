"""Has the world moved since training? Recent traffic against the training data, on five signals.

1. **Inputs.** Each input becomes a hashed bag of its lowercase word unigrams and bigrams (`FEATURES` buckets),
   TF-IDF weighted (the IDF over both samples pooled) and scaled to unit length. The statistic is the squared distance between the two samples' mean vectors (the
   maximum mean discrepancy with a linear kernel):  T = || mean(train) - mean(live) ||^2.  Its threshold comes
   from a permutation test: the two samples are pooled and split at random `permutations` times, and the
   p-value is (1 + #{T_perm >= T}) / (1 + permutations). Under no shift the samples are exchangeable, so the
   test raises a false alarm with probability at most `alpha` (tested over repeated seeds).
2. **Outputs.** The distribution of the answers' labels (label contracts), of the categorical fields of JSON
   answers (json contracts), or of the answers themselves when training has few distinct ones: the same
   permutation test on one-hot vectors, and the total variation distance between the two distributions.
3. **Format compliance and refusals** of the live answers against the training answers: moved when the live
   rate's 95% Wilson interval lies entirely more than `tolerance` (2 points) on the bad side of training's.
4. **Far inputs.** The share of live inputs whose nearest training input (cosine similarity of the features
   above) is less similar than the 5% least typical training inputs are to their own nearest neighbour
   (leave-one-out). Under no shift about 5% fall below; moved when a one-sided binomial test says the share
   is above 5% at level `alpha`.
5. **Accuracy**, when a labelled sample of recent traffic exists: the current model's answers (as served)
   scored against the labels, against its held-out accuracy. The examples differ, so the interval of the
   difference resamples each set on its own (a two-sample bootstrap). Retraining is recommended when the whole
   95% interval lies below zero.

Verdict: `retrain recommended` (accuracy fell), else `drifting (what moved)` when any signal moved, else `stable`.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = 1024  # hashed feature buckets
MAX_SAMPLE = 2000  # rows per side; larger samples are subsampled (seeded)
FAR_QUANTILE = 0.05
REFUSAL = re.compile(
    r"\b(I can(?:not|'t|’t)|I am unable|I'm unable|I am sorry|I'm sorry|I apologi[sz]e|as an AI|"
    r"I won't be able)\b",
    re.IGNORECASE,
)
WORD = re.compile(r"\w+")


def tokens(text: str) -> list[str]:
    """Lowercase word unigrams and bigrams.

    >>> tokens("Card not working")
    ['card', 'not', 'working', 'card not', 'not working']
    """
    words = WORD.findall(text.lower())
    return words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]


def _bucket(token: str) -> int:
    # blake2b, not hash(): Python salts str hashes per process, and features must agree across runs.
    return int.from_bytes(hashlib.blake2b(token.encode(), digest_size=4).digest(), "little") % FEATURES


def counts(texts: list[str]) -> np.ndarray:
    """(len(texts), FEATURES) float64: hashed unigram and bigram counts."""
    x = np.zeros((len(texts), FEATURES))
    for i, text in enumerate(texts):
        for tok in tokens(text):
            x[i, _bucket(tok)] += 1.0
    return x


def featurize(*samples: list[str]) -> list[np.ndarray]:
    """Each sample's rows as TF-IDF vectors of unit length, the IDF taken over all samples pooled.

    The IDF weighs down the words every input shares ("my", "card" in a bank's traffic), which would otherwise
    dominate the mean vectors. Pooled, it does not depend on which sample a row is in, so a permutation of the
    rows leaves it unchanged and the permutation test stays exact.
    """
    raw = [counts(s) for s in samples]
    pooled = np.concatenate(raw)
    df = np.count_nonzero(pooled, axis=0)
    idf = np.log((1 + len(pooled)) / (1 + df))
    out = []
    for x in raw:
        x = x * idf
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        out.append(x / np.where(norms > 0, norms, 1.0))
    return out


@dataclass
class PermutationTest:
    statistic: float  # || mean(a) - mean(b) ||^2
    threshold: float  # the (1 - alpha) quantile of the statistic over the permutations
    p_value: float
    alpha: float
    permutations: int

    @property
    def moved(self) -> bool:
        return self.p_value < self.alpha


def mean_difference_test(
    a: np.ndarray, b: np.ndarray, *, alpha: float = 0.05, permutations: int = 500, seed: int = 0
) -> PermutationTest:
    """Permutation test of || mean(a) - mean(b) ||^2 (rows are samples).

    >>> x = np.eye(4, dtype=np.float32)
    >>> t = mean_difference_test(x[[0, 0, 0, 0]], x[[1, 1, 1, 1]], permutations=200)
    >>> round(t.statistic, 3), t.p_value < 0.05
    (2.0, True)
    """
    pooled = np.concatenate([a, b]).astype(np.float64)
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        raise ValueError("a permutation test needs two non-empty samples")
    stat = float(np.sum((a.mean(axis=0) - b.mean(axis=0)) ** 2))
    rng = np.random.default_rng(seed)
    # Each permutation as a weight vector: +1/n on the rows it puts in the first sample, -1/m on the others;
    # w @ pooled is then the difference of the two means, for a whole chunk of permutations in one product.
    perm_stats = np.empty(permutations)
    chunk = 100
    for start in range(0, permutations, chunk):
        k = min(chunk, permutations - start)
        w = np.full((k, n + m), -1.0 / m)
        for row in range(k):
            w[row, rng.permutation(n + m)[:n]] = 1.0 / n
        diff = w @ pooled
        perm_stats[start : start + k] = np.sum(diff * diff, axis=1)
    p = (1 + int(np.sum(perm_stats >= stat - 1e-12))) / (1 + permutations)
    return PermutationTest(stat, float(np.quantile(perm_stats, 1 - alpha)), p, alpha, permutations)


def _subsample(items: list, limit: int, rng: np.random.Generator) -> list:
    if len(items) <= limit:
        return items
    keep = np.sort(rng.choice(len(items), size=limit, replace=False))
    return [items[i] for i in keep]


# --- outputs ----------------------------------------------------------------------------------------------


def categories(answer: str, contract: Any) -> list[str]:
    """The categorical values an answer carries: its label (label and text contracts), or `field=value` for
    each top-level scalar field of a JSON answer (json contracts). An answer that does not parse is
    `(unparsed)`.

    >>> categories(' refund ', {"type": "label", "labels": ["refund", "other"]})
    ['refund']
    >>> categories('{"team": "billing", "urgent": true, "note": "x"}', {"type": "json"})
    ['note=x', 'team=billing', 'urgent=true']
    """
    import json

    kind = contract.get("type") if isinstance(contract, dict) else getattr(contract, "type", "text")
    text = answer.strip()
    if kind != "json":
        return [text]
    try:
        value = json.loads(text)
    except ValueError:
        return ["(unparsed)"]
    if not isinstance(value, dict):
        return ["(unparsed)"]
    out = []
    for key in sorted(value):
        v = value[key]
        if isinstance(v, (str, int, float, bool)) or v is None:
            out.append(f"{key}={json.dumps(v) if not isinstance(v, str) else v}")
    return out


def _category_matrix(rows: list[list[str]], vocab: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(vocab)}
    x = np.zeros((len(rows), len(vocab)), dtype=np.float32)
    for i, cats in enumerate(rows):
        for c in cats:
            x[i, index[c]] += 1.0 / max(1, len(cats))
    return x


def total_variation(p: Counter, q: Counter) -> float:
    """Half the L1 distance between two normalized count tables.

    >>> total_variation(Counter(a=1, b=1), Counter(a=2))
    0.5
    """
    np_, nq = sum(p.values()), sum(q.values())
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p[k] / np_ - q[k] / nq) for k in keys)


# --- rates ------------------------------------------------------------------------------------------------


def wilson(k: int, n: int) -> tuple[float, float]:
    from tunewise.evaluate.stats import wilson as _wilson

    iv = _wilson(k, n)
    return iv.low, iv.high


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """P[Binomial(n, p) >= k].

    >>> round(binomial_upper_tail(2, 2, 0.5), 3)
    0.25
    """
    return float(sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)))


@dataclass
class Rate:
    live: float
    train: float
    low: float
    high: float
    moved: bool


def _rate(live_flags: list[bool], train_rate: float, worse_is_higher: bool, tolerance: float) -> Rate:
    k, n = sum(live_flags), len(live_flags)
    low, high = wilson(k, n)
    moved = low > train_rate + tolerance if worse_is_higher else high < train_rate - tolerance
    return Rate(k / n, train_rate, low, high, moved)


# --- the report -------------------------------------------------------------------------------------------


@dataclass
class DriftReport:
    n_train: int
    n_live: int
    inputs: PermutationTest
    moved_tokens: list[tuple[str, float]]  # features over-represented in live inputs, by share difference
    outputs: PermutationTest | None
    output_tvd: float | None
    moved_categories: list[tuple[str, float, float]]  # (category, train share, live share)
    format: Rate | None
    refusals: Rate
    far_share: float
    far_threshold: float  # cosine similarity under which an input is far
    far_p_value: float
    far_moved: bool
    accuracy: dict[str, Any] | None = None  # live, held_out, difference interval, n, moved
    alpha: float = 0.05
    notes: list[str] = field(default_factory=list)

    @property
    def moved(self) -> list[str]:
        out = []
        if self.inputs.moved:
            out.append("inputs")
        if self.outputs is not None and self.outputs.moved:
            out.append("outputs")
        if self.format is not None and self.format.moved:
            out.append("format compliance")
        if self.refusals.moved:
            out.append("refusals")
        if self.far_moved:
            out.append("inputs far from training")
        return out

    @property
    def retrain(self) -> bool:
        return bool(self.accuracy and self.accuracy["moved"])

    @property
    def verdict(self) -> str:
        if self.retrain:
            acc = self.accuracy or {}
            what = f"accuracy {acc['live']:.1%} on labelled traffic vs {acc['held_out']:.1%} held out"
            others = [m for m in self.moved]
            return "retrain recommended (" + "; ".join([what, *others]) + ")"
        if self.moved:
            return "drifting (" + ", ".join(self.moved) + ")"
        return "stable"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["verdict"] = self.verdict
        out["moved"] = self.moved
        for key in ("inputs", "outputs"):
            test = getattr(self, key)
            if test is not None:
                out[key]["moved"] = test.moved
        return out


def _nearest_similarity(live: np.ndarray, train: np.ndarray, leave_one_out: bool = False) -> np.ndarray:
    sims = live @ train.T
    if leave_one_out:
        np.fill_diagonal(sims, -np.inf)
    return sims.max(axis=1)


def _top_tokens(train_texts: list[str], live_texts: list[str], k: int = 8) -> list[tuple[str, float]]:
    """The words that moved most towards the live inputs (for 'what moved'), with the rise of their share of
    inputs. Ranked by rise x log(live share / training share), each share smoothed by 1 point, so that a word new
    to the traffic outranks a common word a little more frequent."""
    import math

    def shares(texts: list[str]) -> Counter:
        c: Counter = Counter()
        for t in texts:
            c.update(set(WORD.findall(t.lower())))
        return Counter({w: n / len(texts) for w, n in c.items()})

    a, b = shares(train_texts), shares(live_texts)
    scored = []
    for w in b:
        rise = b[w] - a.get(w, 0.0)
        if rise > 0:
            scored.append((rise * math.log((b[w] + 0.01) / (a.get(w, 0.0) + 0.01)), w, rise))
    scored.sort(key=lambda x: (-x[0], x[1]))
    return [(w, round(rise, 4)) for _, w, rise in scored[:k]]


def compare(
    train_inputs: list[str],
    train_answers: list[str],
    live_inputs: list[str],
    live_answers: list[str],
    contract: Any = None,
    *,
    labelled_correct: list[bool] | None = None,
    held_out_correct: list[bool] | None = None,
    alpha: float = 0.05,
    permutations: int = 500,
    tolerance: float = 0.02,
    seed: int = 0,
) -> DriftReport:
    """The drift report of live traffic against training data (see the module's docstring for each test)."""
    from tunewise.evaluate.scorers import as_contract, parse_strict

    if not train_inputs or not live_inputs:
        raise ValueError("drift needs training inputs and live inputs")
    contract = contract or {"type": "text"}
    c = as_contract(contract)
    rng = np.random.default_rng(seed)
    train_idx = _subsample(list(range(len(train_inputs))), MAX_SAMPLE, rng)
    live_idx = _subsample(list(range(len(live_inputs))), MAX_SAMPLE, rng)
    t_in = [train_inputs[i] for i in train_idx]
    l_in = [live_inputs[i] for i in live_idx]
    t_ans = [train_answers[i] for i in train_idx]
    l_ans = [live_answers[i] for i in live_idx]
    x_train, x_live = featurize(t_in, l_in)
    inputs = mean_difference_test(x_train, x_live, alpha=alpha, permutations=permutations, seed=seed)
    notes: list[str] = []

    # Outputs: labels or JSON fields; for a text contract only when training has few distinct answers.
    outputs = None
    tvd = None
    moved_cats: list[tuple[str, float, float]] = []
    t_cats = [categories(a, c) for a in t_ans]
    l_cats = [categories(a, c) for a in l_ans]
    distinct = {x for cats in t_cats for x in cats}
    if c.type in ("label", "json") or len(distinct) <= max(20, len(t_ans) // 10):
        vocab = sorted(distinct | {x for cats in l_cats for x in cats})
        outputs = mean_difference_test(
            _category_matrix(t_cats, vocab),
            _category_matrix(l_cats, vocab),
            alpha=alpha,
            permutations=permutations,
            seed=seed + 1,
        )
        tc = Counter(x for cats in t_cats for x in cats)
        lc = Counter(x for cats in l_cats for x in cats)
        tvd = total_variation(tc, lc)
        nt, nl = sum(tc.values()), sum(lc.values())
        shifts = sorted(vocab, key=lambda k: -abs(lc[k] / nl - tc[k] / nt))
        moved_cats = [(k, round(tc[k] / nt, 4), round(lc[k] / nl, 4)) for k in shifts[:6]]
    else:
        notes.append("free-text answers with many distinct values: no output distribution to compare")

    fmt = None
    if c.type != "text":
        train_ok = [parse_strict(a, c)[0] for a in t_ans]
        fmt = _rate(
            [bool(parse_strict(a, c)[0]) for a in l_ans],
            sum(map(bool, train_ok)) / len(train_ok),
            worse_is_higher=False,
            tolerance=tolerance,
        )
    refusals = _rate(
        [bool(REFUSAL.search(a)) for a in l_ans],
        sum(bool(REFUSAL.search(a)) for a in t_ans) / len(t_ans),
        worse_is_higher=True,
        tolerance=tolerance,
    )

    # Far inputs: calibrated on the training inputs' own leave-one-out nearest neighbours.
    loo = _nearest_similarity(x_train, x_train, leave_one_out=True) if len(t_in) > 1 else np.ones(1)
    far_threshold = float(np.quantile(loo, FAR_QUANTILE))
    near = _nearest_similarity(x_live, x_train)
    far = int(np.sum(near < far_threshold))
    far_p = binomial_upper_tail(far, len(l_in), FAR_QUANTILE)

    accuracy = None
    if labelled_correct and held_out_correct:
        accuracy = accuracy_gap(labelled_correct, held_out_correct, seed=seed)
    elif labelled_correct:
        notes.append(
            "no held-out evaluation of the current model: accuracy on labelled traffic is not compared"
        )
    return DriftReport(
        n_train=len(t_in),
        n_live=len(l_in),
        inputs=inputs,
        moved_tokens=_top_tokens(t_in, l_in) if inputs.moved else [],
        outputs=outputs,
        output_tvd=tvd,
        moved_categories=moved_cats if outputs is not None and outputs.moved else [],
        format=fmt,
        refusals=refusals,
        far_share=far / len(l_in),
        far_threshold=far_threshold,
        far_p_value=far_p,
        far_moved=far_p < alpha,
        accuracy=accuracy,
        alpha=alpha,
        notes=notes,
    )


def accuracy_gap(
    live_correct: list[bool], held_out_correct: list[bool], *, resamples: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """Accuracy on labelled traffic minus held-out accuracy, with a 95% two-sample bootstrap interval; `moved`
    when the whole interval is below zero.

    >>> gap = accuracy_gap([False] * 20, [True] * 20)
    >>> gap["difference"], gap["low"], gap["high"], gap["moved"]
    (-1.0, -1.0, -1.0, True)
    """
    a = np.asarray(live_correct, dtype=np.float64)
    b = np.asarray(held_out_correct, dtype=np.float64)
    rng = np.random.default_rng(seed)
    da = a[rng.integers(0, len(a), size=(resamples, len(a)))].mean(axis=1)
    db = b[rng.integers(0, len(b), size=(resamples, len(b)))].mean(axis=1)
    low, high = np.quantile(da - db, [0.025, 0.975])
    return {
        "live": float(a.mean()),
        "held_out": float(b.mean()),
        "n_live": len(a),
        "n_held_out": len(b),
        "difference": float(a.mean() - b.mean()),
        "low": float(low),
        "high": float(high),
        "moved": bool(high < 0),
    }


# --- the project's drift ----------------------------------------------------------------------------------


def _input_text(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages if m.get("role") == "user")


def labelled_sample(project: Any, contract: Any, since: str | None = None) -> list[bool] | None:
    """Correctness of the served answers (the drafts) against their labels, over the newest import of
    labelled traffic (made since `since`); None without one."""
    from tunewise.data.load import load_examples
    from tunewise.evaluate.scorers import score
    from tunewise.lifecycle.capture import traffic
    from tunewise.lifecycle.lineage import parents
    from tunewise.lifecycle.traffic import LABELLED

    with project.registry() as registry:
        found = [v for v in registry.dataset_versions() if v["name"] == LABELLED]
    found = [v for v in found if not since or v["created_at"] >= since]
    if not found:
        return None
    version = found[0]
    ids = next(
        (
            p["detail"].get("traffic_ids")
            for p in parents(project, version["id"])
            if p["relation"] == "import"
        ),
        None,
    )
    if not ids:
        return None
    drafts = {r["id"]: r["response"] for r in traffic(project)}
    examples = load_examples(Path(version["path"]))
    out = []
    for ex, tid in zip(examples, ids, strict=False):
        if tid in drafts:
            out.append(score(drafts[tid], ex["messages"][-1]["content"], contract).correct)
    return out or None


def held_out_sample(project: Any, run_id: str, contract: Any) -> list[bool] | None:
    """Correctness of the current model's answers in its newest evaluation; None without one."""
    import json

    from tunewise.evaluate.scorers import score
    from tunewise.registry.runs import RunStore

    for run in RunStore(project).list(kind="eval"):
        if run.status != "succeeded" or run.config.get("fine_tuned_run") != run_id:
            continue
        path = run.path / "records.jsonl"
        if not path.is_file():
            continue
        records = [json.loads(x) for x in path.read_text().splitlines() if x]
        tuned = [r for r in records if r["arm"].startswith("fine-tuned")]
        if tuned:
            arm = tuned[0]["arm"]
            return [score(r["output"], r["reference"], contract).correct for r in tuned if r["arm"] == arm]
    return None


def project_drift(
    project: Any, spec: Any, model: str, *, since: str | None = None, alpha: float = 0.05, seed: int = 0
) -> tuple[DriftReport, str]:
    """The drift report of `model`'s captured traffic (since `since`) against the training data of the run it
    answers with; returns (report, run id)."""
    from tunewise.data.load import load_examples
    from tunewise.errors import TunewiseError
    from tunewise.lifecycle.capture import traffic
    from tunewise.lifecycle.retrain import current_model
    from tunewise.registry.runs import RunStore

    cur = current_model(project, model)
    run = RunStore(project).get(cur.run_id, kinds=("train",))
    config = run.config.get("config", run.config)
    train = [ex for p in config.get("data", []) for ex in load_examples(Path(p))]
    rows = traffic(project, model=model, since=since)
    if not rows:
        raise TunewiseError(
            f"no captured traffic for model {model}" + (f" since {since}" if since else ""),
            hint="serve it with `tunewise serve --capture MODEL`; `tunewise drift --model` names another model",
        )
    contract = spec.contract
    report = compare(
        [_input_text(ex["messages"][:-1]) for ex in train],
        [ex["messages"][-1]["content"] for ex in train],
        [_input_text(r["messages"]) for r in rows],
        [r["response"] for r in rows],
        contract,
        labelled_correct=labelled_sample(project, contract, since),
        held_out_correct=held_out_sample(project, cur.run_id, contract),
        alpha=alpha,
        seed=seed,
    )
    return report, cur.run_id
