"""The task spec, `tunewise.yaml`: stage 1 of the guide, a precise task boundary.

Typed with pydantic; every problem is reported at once with its line in the file, and an unknown key names
the nearest valid one. `load_spec()` is the only way the rest of tunewise reads a spec.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tunewise.economics.cost import DATA_PREPARATION_COST, DEFAULT_PLATFORMS, RETRAIN_EVERY_DAYS
from tunewise.errors import ConfigError, nearest

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"

Auto = Literal["auto"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TaskSpec(_Strict):
    name: str = Field(min_length=1, description="Short identifier, used in model and report names.")
    target: str = Field(
        min_length=1,
        description="The behavioural target in one sentence: what the model must do after fine-tuning.",
    )


class LabelContract(_Strict):
    type: Literal["label"]
    labels: list[str] = Field(min_length=2, description="The closed set of valid answers.")

    @field_validator("labels")
    @classmethod
    def _unique(cls, labels: list[str]) -> list[str]:
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"labels repeat: {', '.join(dupes)}")
        return labels


class JsonContract(_Strict):
    type: Literal["json"]
    json_schema: dict[str, Any] = Field(
        default_factory=dict, alias="schema", description="A JSON Schema every completion must meet."
    )
    text_fields: list[str] = Field(
        default_factory=list,
        description="Dotted paths of fields that hold free prose (e.g. `reply`): left out of exact-match "
        "accuracy and field F1, and scored instead by ROUGE-L against the reference's text.",
    )

    @field_validator("text_fields")
    @classmethod
    def _text_paths(cls, paths: list[str]) -> list[str]:
        bad = [p for p in paths if not p or any(not part for part in p.split("."))]
        if bad:
            raise ValueError(
                f"text_fields must be dotted key paths like 'reply' or 'answer.body' (got {bad!r})"
            )
        return paths

    @model_validator(mode="after")
    def _text_fields_in_schema(self) -> JsonContract:
        """A text field the schema does not have is a typo that would silently score nothing."""
        for path in self.text_fields:
            node: Any = self.json_schema
            for depth, key in enumerate(path.split(".")):
                properties = node.get("properties") if isinstance(node, dict) else None
                if not isinstance(properties, dict):
                    break  # the schema says nothing about this level: nothing to check against
                if key not in properties:
                    where = ".".join(path.split(".")[:depth]) or "the top level"
                    guess = nearest(key, properties)
                    raise ValueError(
                        f"text_fields: '{path}' is not in the schema ({where} has "
                        f"{', '.join(sorted(properties)) or 'no properties'})"
                        + (f"; did you mean '{guess}'?" if guess else "")
                    )
                node = properties[key]
            else:
                kind = node.get("type") if isinstance(node, dict) else None
                if kind is not None and "string" not in (kind if isinstance(kind, list) else [kind]):
                    raise ValueError(f"text_fields: '{path}' holds prose, but the schema types it as {kind}")
        return self

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        import jsonschema

        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        return schema


class RegexContract(_Strict):
    type: Literal["regex"]
    pattern: str = Field(
        description="A Python regular expression the whole completion must match, in the subset constrained "
        "decoding enforces (`unsupported_by_grammar` says what is out)."
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"regular expression does not compile: {exc}") from None
        problem = unsupported_by_grammar(pattern)
        if problem:
            raise ValueError(
                f"constrained decoding cannot enforce this regular expression: {problem}; rewrite it without, "
                "so that the +constrained arms meet it by construction"
            )
        return pattern


_GROUP_KINDS = {
    "?=": "a lookahead (?=...)",
    "?!": "a negative lookahead (?!...)",
    "?<=": "a lookbehind (?<=...)",
    "?<!": "a negative lookbehind (?<!...)",
    "?P<": "a named group (?P<name>...) (use (...))",
    "?P=": "a backreference (?P=name)",
    "?#": "a comment (?#...)",
    "?>": "an atomic group (?>...)",
    "?(": "a conditional group (?(1)...)",
}


def unsupported_by_grammar(pattern: str) -> str | None:
    """What in a valid Python regular expression the grammar engine of constrained decoding (xgrammar,
    evaluate/constrain.py) refuses or reads otherwise than Python, or None. It reads the pattern's text, as
    xgrammar does: group modifiers, backreferences, word boundaries, `\\A`/`\\Z`, possessive quantifiers and
    `{,n}` are out.

    >>> unsupported_by_grammar(r"TCK-\\d{4,6}") is None
    True
    >>> unsupported_by_grammar(r"(a)\\1")
    'a backreference \\\\1 at position 3'
    >>> unsupported_by_grammar(r"(?i)yes|no")
    'an inline flag (?i) at position 0'
    """
    i, in_class, n = 0, False, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            e = pattern[i + 1]
            if not in_class:
                if e in "123456789":
                    return f"a backreference \\{e} at position {i}"
                if e in "bB":
                    return f"a word boundary \\{e} at position {i}"
                if e in "AZ":
                    return f"the anchor \\{e} at position {i} (the whole output must match anyway: drop it)"
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            i += 1
            if i < n and pattern[i] == "^":
                i += 1
            # A leading ']' is a literal to Python, the class's end to xgrammar.
            if i < n and pattern[i] == "]":
                return f"a ']' first in the character class at position {i} (write it as \\])"
            continue
        elif c == "(" and pattern.startswith("?", i + 1) and not pattern.startswith("?:", i + 1):
            kind = next((v for k, v in _GROUP_KINDS.items() if pattern.startswith(k, i + 1)), None)
            if kind is None:
                flags = re.match(r"\?[aiLmsux-]*[:)]", pattern[i + 1 :])
                kind = f"an inline flag ({flags.group(0)[:-1]})" if flags else "a group modifier (?...)"
            return f"{kind} at position {i}"
        elif (
            c in "*+?}"
            and pattern.startswith("+", i + 1)
            and (c != "?" or i == 0 or pattern[i - 1] not in "*+?}")
        ):
            return f"a possessive quantifier {c}+ at position {i}"
        elif c == "{" and re.match(r"\{,\d+\}", pattern[i:]):
            return f"a repeat with no lower bound {{,n}} at position {i} (write {{0,n}})"
        i += 1
    return None


class TextContract(_Strict):
    type: Literal["text"] = "text"


Contract = Annotated[LabelContract | JsonContract | RegexContract | TextContract, Field(discriminator="type")]


class CsvColumns(_Strict):
    prompt: str = Field(description="CSV column holding the user's input.")
    completion: str = Field(description="CSV column holding the ideal answer.")
    system: str | None = Field(default=None, description="Optional CSV column holding a system prompt.")


class DataSpec(_Strict):
    train: list[str] = Field(min_length=1, description="Training files (paths relative to tunewise.yaml).")
    eval: list[str] = Field(
        default_factory=list, description="Held-out files; when empty, a stratified split of train."
    )
    format: Literal[
        "auto", "openai", "prompt-completion", "alpaca", "sharegpt", "vertex", "bedrock", "csv"
    ] = "auto"
    csv_columns: CsvColumns | None = None
    eval_fraction: float = Field(default=0.2, gt=0, lt=1)
    seed: int = 0

    @field_validator("train", "eval", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class KnowledgeSpec(_Strict):
    """The documents the retrieval arms read: ingested, chunked and indexed once per content version."""

    docs: list[str] = Field(
        min_length=1,
        description="Document folders, files or globs (relative to tunewise.yaml): Markdown, text, HTML.",
    )
    chunk_tokens: int = Field(default=256, ge=16, le=8192, description="Tokens per chunk.")
    overlap: int = Field(default=32, ge=0, le=4096, description="Tokens shared by neighbouring chunks.")
    top_k: int = Field(default=4, ge=1, le=64, description="Passages put in each prompt.")
    retriever: Literal["hybrid", "bm25", "dense"] = Field(
        default="hybrid",
        description="hybrid: BM25 and dense embeddings fused by reciprocal rank; bm25 or dense alone.",
    )
    vector_store: Literal["faiss", "qdrant"] = Field(
        default="faiss",
        description="Where the dense embeddings are searched: faiss (embedded, in the state folder) or qdrant.",
    )
    qdrant_url: str | None = Field(
        default=None,
        description="The Qdrant server (http://host:6333) when vector_store is qdrant; ':memory:' runs one "
        "in-process. Its API key, if any, is read from QDRANT_API_KEY.",
    )

    @field_validator("docs", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _settings_fit(self) -> KnowledgeSpec:
        if self.overlap >= self.chunk_tokens:
            raise ValueError(
                f"knowledge.overlap ({self.overlap}) must be smaller than knowledge.chunk_tokens ({self.chunk_tokens})"
            )
        if self.vector_store == "qdrant" and not self.qdrant_url:
            raise ValueError(
                "knowledge.vector_store is qdrant but knowledge.qdrant_url is missing (e.g. http://localhost:6333)"
            )
        return self


class ModelSpec(_Strict):
    base: str = Field(
        default=EMBEDDED_MODEL,
        description="`embedded:smollm2-135m-instruct`, a local Hugging Face folder, or a Hub id.",
    )
    trust_remote_code: bool = False


def _not_bool(value: Any) -> Any:
    """YAML reads `yes` as true, and pydantic would take true for 1: a count must be written as a number."""
    if isinstance(value, bool):
        raise ValueError("Input should be a number")
    return value


def _count(low: int, high: int | None = None) -> Any:
    return Annotated[int, BeforeValidator(_not_bool), Field(ge=low, le=high)]


# The bounds of every training hyperparameter, defined once: the spec's `hyperparameters`, `tunewise train`'s
# flags, the fine-tuning jobs API and `train.config.TrainConfig` all validate against these types, so the same
# value gets the same error wherever it was typed.
Epochs = _count(1, 1000)
BatchSize = _count(1, 65536)  # examples per optimizer step
LoraRank = _count(1, 4096)
MaxLength = _count(16, 1 << 20)  # tokens per example
MicroBatchTokens = _count(16)
MicroBatchWorkers = _count(1, 64)
Steps = _count(1)  # an interval in optimizer steps (evaluations, checkpoints)
LearningRate = Annotated[float, BeforeValidator(_not_bool), Field(gt=0, lt=1)]
LoraAlpha = Annotated[float, BeforeValidator(_not_bool), Field(gt=0)]
LoraDropout = Annotated[float, BeforeValidator(_not_bool), Field(ge=0, lt=1)]


class Hyperparameters(_Strict):
    epochs: Auto | Epochs = "auto"
    learning_rate: Auto | LearningRate = "auto"
    batch_size: Auto | BatchSize = "auto"
    lora_rank: Auto | LoraRank = "auto"
    lora_alpha: Auto | LoraAlpha = "auto"
    lora_dropout: LoraDropout = 0.0
    max_length: Auto | MaxLength = "auto"
    # Tokens per packed micro-batch, the bound on activation memory; auto: 768 for LoRA on a bf16 base, else
    # 256 (train/config.py's `micro_batch_tokens` says why).
    micro_batch_tokens: Auto | MicroBatchTokens = "auto"
    # Micro-batches computed at once, one thread each; auto: 2 for fp32 LoRA on a CPU with two or more threads
    # and no dropout, else 1 (train/workers.py says why). Each one in flight holds its activations.
    micro_batch_workers: Auto | MicroBatchWorkers = "auto"
    # auto: tunewise's CPU training kernels where they are tested (a CPU, the Llama family); off: plain
    # transformers + PEFT (train/kernels.py says what each runs).
    kernels: Literal["auto", "off"] = "auto"
    # Recompute activations in the backward pass; auto: where the memory estimate needs it (train/memory.py).
    gradient_checkpointing: Literal["auto", "on", "off"] = "auto"
    # `tunewise run` holds this share of the training split out of training (at most 200 examples, none when
    # it would be fewer than 10) as the validation set: its loss is the training curve's held-out loss, and
    # an earlier step's adapter is kept when its loss is lower than the last step's beyond the noise. The
    # held-out evaluation set is never seen by training.
    validation_fraction: Annotated[float, Field(ge=0, lt=0.5)] = 0.1
    keep_best: bool = True


BUILTIN_ARMS = ("zero-shot", "few-shot", "retrieved", "fine-tuned", "rag", "rag+fine-tuned")
ARM_VARIANTS = ("scored", "constrained")  # label scoring; schema-constrained decoding (evaluate/constrain.py)
# The arms that put passages retrieved from the `knowledge` documents in the prompt (evaluate/knowledge.py).
RAG_ARMS = ("rag", "rag+fine-tuned")


def split_arm_name(arm: str) -> tuple[str, str]:
    """(base arm, variant or '') of an arm name; `rag+fine-tuned` is one base arm, not rag with a variant.

    >>> split_arm_name("few-shot+scored"), split_arm_name("rag+fine-tuned"), split_arm_name("rag+fine-tuned+scored")
    (('few-shot', 'scored'), ('rag+fine-tuned', ''), ('rag+fine-tuned', 'scored'))
    """
    for compound in ("rag+fine-tuned",):
        if arm == compound or arm.startswith(compound + "+"):
            return compound, arm[len(compound) + 1 :]
    base, _, variant = arm.partition("+")
    return base, variant


class EndpointArm(_Strict):
    """An OpenAI-compatible chat completions API evaluated as one more arm (see evaluate/endpoint.py)."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="The arm's name in tables and the report."
    )
    base_url: str = Field(description="The API root, e.g. https://api.openai.com/v1")
    model: str = Field(min_length=1)
    api_key_env: str | None = Field(default=None, description="Environment variable holding the API key.")
    prompt: Literal["zero-shot", "few-shot", "retrieved"] = "zero-shot"
    pricing: str | None = Field(
        default=None,
        description="Pricing catalog entry whose per-token prices apply (`tunewise pricing` lists them).",
    )
    concurrency: int = Field(default=8, ge=1, le=256, description="Requests in flight at once.")
    timeout_s: float = Field(default=60, gt=0, description="Per-request timeout.")
    max_retries: int = Field(default=4, ge=0, le=20, description="Retries of a transient failure.")

    @field_validator("name")
    @classmethod
    def _not_builtin(cls, name: str) -> str:
        if name in BUILTIN_ARMS:
            raise ValueError(f"'{name}' is a built-in arm; give the endpoint its own name")
        return name

    @field_validator("base_url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not re.match(r"^https?://[^/\s]+", url):
            raise ValueError("must be an http(s) URL of the API root, e.g. https://api.openai.com/v1")
        return url.rstrip("/")


class JudgeSpec(_Strict):
    """A pairwise model judge of free-text answers (see evaluate/judge.py)."""

    model: str = Field(
        default="local",
        min_length=1,
        description="`local` (the spec's base model) or the name of an entry in evaluation.endpoints.",
    )
    rubric: str | None = Field(
        default=None, description="What makes one answer better; default: built from task.target."
    )


# A learning curve: at most this many points (each but the last is one more training run).
MAX_CURVE_POINTS = 8
DEFAULT_LEARNING_CURVE = (0.25, 0.5, 1.0)


class EvaluationSpec(_Strict):
    arms: list[str] = Field(
        default_factory=lambda: ["zero-shot", "few-shot", "retrieved", "fine-tuned"],
        description="Built-in arms, each optionally with a variant: `few-shot+scored` (label contracts), "
        "`few-shot+constrained` (json and regex). `rag` and `rag+fine-tuned` put passages retrieved from the "
        "`knowledge` documents in the prompt.",
    )

    @field_validator("arms")
    @classmethod
    def _known_arms(cls, arms: list[str]) -> list[str]:
        for arm in arms:
            base, variant = split_arm_name(arm)
            if base not in BUILTIN_ARMS:
                guess = nearest(base, list(BUILTIN_ARMS))
                tip = f" (did you mean '{guess}'?)" if guess else f" (arms: {', '.join(BUILTIN_ARMS)})"
                raise ValueError(f"unknown arm '{arm}'{tip}")
            if variant and variant not in ARM_VARIANTS:
                raise ValueError(f"unknown variant '+{variant}' in '{arm}' (variants: +scored, +constrained)")
        return arms

    endpoints: list[EndpointArm] = Field(
        default_factory=list, description="OpenAI-compatible APIs evaluated as extra arms."
    )

    @field_validator("endpoints")
    @classmethod
    def _unique_endpoints(cls, endpoints: list[EndpointArm]) -> list[EndpointArm]:
        names = [e.name for e in endpoints]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"endpoint names repeat: {', '.join(dupes)}")
        return endpoints

    few_shot_k: Auto | Annotated[int, Field(ge=1, le=64)] = Field(
        default="auto",
        description="Examples in the few-shot and retrieved prompts. auto: 5 to 10, balanced across labels "
        "(see `tunewise.evaluate.arms.few_shot_k`).",
    )
    few_shot_token_budget: int = Field(default=1024, ge=64)
    consistency_samples: int = Field(default=5, ge=1, le=100)
    temperature: float = Field(default=0.7, ge=0, le=2)
    max_new_tokens: Auto | Annotated[int, Field(ge=1, le=8192)] = "auto"
    limit: int | None = Field(default=None, ge=1, description="Evaluate only the first N held-out examples.")
    label_scoring: Literal["mean", "sum"] = Field(
        default="mean",
        description="How `+scored` arms rank labels: mean log-probability per reply token (length normalized) "
        "or the reply's total log-probability.",
    )
    json_guard: bool = Field(
        default=True,
        description="For json contracts: stop free decoding from looping inside the JSON (a key its object "
        "already holds, an object its list already holds). The row goes back to before the repetition and the "
        "model's next-best token closes the container; every arm gets it, local models only.",
    )
    constrained: Auto | bool = Field(
        default="auto",
        description="Variants that meet the contract by construction, evaluated next to each free arm: label "
        "scoring (`ARM+scored`) for label contracts, schema-constrained decoding (`ARM+constrained`) for json "
        "and regex. auto: for the prompted arms (a fair baseline before fine-tuning); true: the fine-tuned arm "
        "too; false: none.",
    )
    judge: JudgeSpec | None = Field(
        default=None,
        description="A model that compares two arms' answers, asked in both orders (`tunewise review judge`).",
    )
    learning_curve: list[Annotated[float, Field(gt=0, le=1)]] | None = Field(
        default=None,
        max_length=MAX_CURVE_POINTS,
        description="Fractions of the training split to train and evaluate the fine-tuned arm on (nested, "
        "stratified by label), e.g. [0.25, 0.5, 1.0]: accuracy against examples, and whether more data pays. "
        "The whole split is always a point: it is the pipeline's own training run.",
    )

    @field_validator("learning_curve")
    @classmethod
    def _fractions_in_order(cls, fractions: list[float] | None) -> list[float] | None:
        if fractions is None:
            return None
        if not fractions:
            raise ValueError("give at least one fraction, e.g. [0.25, 0.5, 1.0], or leave the key out")
        if any(b <= a for a, b in zip(fractions, fractions[1:])):
            raise ValueError(f"fractions must increase, each once (got {fractions}), e.g. [0.25, 0.5, 1.0]")
        return fractions


class EconomicsSpec(_Strict):
    queries_per_day: float = Field(default=500, ge=0)
    # Platforms whose every figure the cost needs is in the catalog, so a fresh project can be priced; add
    # others (azure-openai, together, vertex, ...) once their missing figures are in your pricing file.
    platforms: list[str] = Field(default_factory=lambda: list(DEFAULT_PLATFORMS))
    retrain_every_days: float = Field(
        default=RETRAIN_EVERY_DAYS, gt=0, description="Quarterly retraining by default."
    )
    value_per_accuracy_point: float | None = Field(
        default=None, ge=0, description="What one point of accuracy is worth per month, in dollars."
    )
    pricing_file: str | None = None
    data_preparation_cost: float = Field(
        default=DATA_PREPARATION_COST,
        ge=0,
        description="Dollars to prepare (collect, label, review) the training data; a default, set your own.",
    )
    team_size: int | None = Field(
        default=None,
        ge=1,
        description="People on the team: the platform and team rules (docs/rules.md) need it; unset, they stay "
        "undecided.",
    )
    vector_db: Literal["embedded", "managed"] = Field(
        default="embedded",
        description="The vector index the retrieval arms are priced with: embedded (FAISS on the serving machine, "
        "$0/month) or managed (a vector database server; the catalog's vector-db/managed figure).",
    )
    vector_db_per_month: float | None = Field(
        default=None,
        ge=0,
        description="Dollars per month for the vector index; unset, the catalog's figure for vector_db.",
    )
    embedding_per_million_tokens: float = Field(
        default=0.0,
        ge=0,
        description="An embedding API's price per million tokens; 0 for the self-hosted embedder.",
    )


class Spec(_Strict):
    task: TaskSpec
    contract: Contract = Field(default_factory=TextContract)
    system_prompt: str = Field(default="", description="The system prompt of the prompted arms.")
    data: DataSpec
    model: ModelSpec = Field(default_factory=ModelSpec)
    method: Literal["lora", "qlora", "full"] = "lora"
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    economics: EconomicsSpec = Field(default_factory=EconomicsSpec)
    knowledge: KnowledgeSpec | None = Field(
        default=None, description="Documents for the retrieval (rag) arms."
    )
    retrain_every_days: int | None = Field(
        default=None,
        ge=1,
        description="Days after which the served model counts as due for retraining (the report warns).",
    )
    registry: str | None = Field(
        default=None,
        description="Where the registry lives: left out, the embedded SQLite file in .tunewise/; "
        "postgresql://USER@HOST:PORT/DATABASE for one that a team's servers and workers share (a password goes "
        "in ~/.pgpass or the TUNEWISE_REGISTRY environment variable, not in the spec).",
    )

    @field_validator("registry")
    @classmethod
    def _registry_is_postgres(cls, value: str | None) -> str | None:
        from tunewise.registry.postgres import is_url

        if value is not None and not is_url(value):
            raise ValueError(f"'{value}' is not a PostgreSQL URL (postgresql://USER@HOST:PORT/DATABASE)")
        return value

    @model_validator(mode="after")
    def _variants_fit_the_contract(self) -> Spec:
        fits = {"label": "scored", "json": "constrained", "regex": "constrained"}.get(self.contract.type)
        for arm in self.evaluation.arms:
            variant = split_arm_name(arm)[1]
            if variant and variant != fits:
                raise ValueError(
                    f"evaluation.arms: '{arm}' does not fit a {self.contract.type} contract"
                    + (f" (use +{fits})" if fits else " (a text contract has no format to enforce)")
                )
        return self

    @model_validator(mode="after")
    def _rag_needs_knowledge(self) -> Spec:
        rag = [a for a in self.evaluation.arms if split_arm_name(a)[0] in RAG_ARMS]
        if rag and self.knowledge is None:
            raise ValueError(
                f"evaluation.arms: '{rag[0]}' retrieves from documents but the spec has no knowledge section "
                "(add `knowledge: {docs: FOLDER}`)"
            )
        return self

    @model_validator(mode="after")
    def _judge_is_known(self) -> Spec:
        judge = self.evaluation.judge
        names = [e.name for e in self.evaluation.endpoints]
        if judge is not None and judge.model != "local" and judge.model not in names:
            raise ValueError(
                f"evaluation.judge.model: '{judge.model}' is neither `local` nor an endpoint of "
                f"evaluation.endpoints ({', '.join(names) or 'none'})"
            )
        return self

    @model_validator(mode="after")
    def _csv_needs_columns(self) -> Spec:
        if self.data.format == "csv" and self.data.csv_columns is None:
            raise ValueError(
                "data.format is csv but data.csv_columns is missing (say which columns hold prompt and completion)"
            )
        return self

    def warnings(self) -> list[str]:
        """Problems that do not stop a run but weaken the task boundary (the guide's stage 1 failure point)."""
        out = []
        words = re.findall(r"\w+", self.task.target)
        if len(words) < 4:
            out.append(
                f"task.target is vague ({len(words)} word(s)): write one sentence naming the input, the output "
                "and its form, e.g. 'Given a support ticket, reply with JSON holding category, priority and "
                "the ticket's reference number.'"
            )
        if isinstance(self.contract, TextContract):
            out.append(
                "no output contract (contract.type is text): format compliance cannot be measured; use label, "
                "json or regex if the output has a form"
            )
        if not self.system_prompt.strip():
            out.append("system_prompt is empty: the prompted arms get no instructions, which strawmans them")
        return out


# --- loading -------------------------------------------------------------------------------------------


# Bounds on what a spec's YAML may cost to read. A spec is a page of settings, so the bounds are far above any
# real one yet keep hostile input cheap: aliases may add at most ALIAS_BUDGET nodes to the document once expanded
# (a "billion laughs" file is 9 lines that expand to 10**9 nodes, and everything downstream walks the expanded
# tree), collections may nest at most MAX_DEPTH deep (the YAML composer recurses once per level), and an integer
# may have at most MAX_INT_BITS bits (about 77 digits; Python refuses to print one of over 4300 digits).
ALIAS_BUDGET = 10_000
MAX_DEPTH = 100
MAX_INT_BITS = 256
MAX_SPEC_BYTES = 1 << 20  # a spec file is read whole
MAX_NODES = 50_000  # values in the document, aliases expanded; PyYAML composes about 50,000 a second


class _TooCostly(yaml.MarkedYAMLError):
    """A spec past one of the bounds above; `problem` says which, `hint` what to do."""

    def __init__(self, problem: str, mark: Any, hint: str):
        super().__init__(problem=problem, problem_mark=mark)
        self.hint = hint


class SpecYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, bounded: aliases, nesting depth and integer size are checked while composing,
    before anything walks the document. `nodes_expanded` counts the nodes the document holds with every alias
    expanded, as far as it was read."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0
        self.alias_nodes = 0
        self.nodes_expanded = 0
        self._sizes: dict[int, int] = {}  # id(node) -> its node count with aliases expanded

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = self.anchors.get(event.anchor)
            if node is not None:
                size = self._sizes.get(id(node))
                if size is None:
                    raise _TooCostly(
                        f"alias *{event.anchor} refers to a collection that contains it (an endless structure)",
                        event.start_mark,
                        "write the value out instead of the alias",
                    )
                self.alias_nodes += size
                self.nodes_expanded += size
                if self.alias_nodes > ALIAS_BUDGET:
                    raise _TooCostly(
                        f"alias *{event.anchor} takes the document past the alias budget: aliases may add at "
                        f"most {ALIAS_BUDGET:,} values once expanded, and this file's add {self.alias_nodes:,} "
                        "so far",
                        event.start_mark,
                        "write the values out, or use fewer aliases of large collections",
                    )
            return super().compose_node(parent, index)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _TooCostly(
                f"collections nest more than {MAX_DEPTH} deep",
                self.peek_event().start_mark,
                "a spec needs far less nesting: flatten the value",
            )
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        if isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._sizes[id(item)] for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            size = 1 + sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
        else:
            size = 1
        self._sizes[id(node)] = size
        self.nodes_expanded += 1
        if self.nodes_expanded > MAX_NODES:
            raise _TooCostly(
                f"the document holds more than {MAX_NODES:,} values, far more than any task spec needs",
                node.start_mark,
                "check that this is the task spec; write large lists once",
            )
        return node

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = sum(c.isalnum() for c in node.value)
        # 4 bits per character bounds every base YAML allows (hex is the densest), before Python parses it.
        if digits * 4 > MAX_INT_BITS * 2:
            value = None
        else:
            value = super().construct_yaml_int(node)
        if value is None or value.bit_length() > MAX_INT_BITS:
            raise _TooCostly(
                f"integer of {len(node.value):,} characters is too large to be a setting",
                node.start_mark,
                "write the number you mean (every count in a spec is far below 10**70)",
            )
        return value


SpecYamlLoader.add_constructor("tag:yaml.org,2002:int", SpecYamlLoader.construct_yaml_int)


class SpecFileError(ConfigError):
    """A spec refused before any work: one problem, shown on one line with the file and line."""

    def __init__(self, source: str, problem: str, hint: str):
        super().__init__(source, [problem])
        self.message = f"{source}: {problem}"
        self.hint = hint
        self.args = (self.message,)


def load_yaml_bounded(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    """The document's Python value and its node tree (for line numbers), read under SpecYamlLoader's bounds."""
    loader = None
    try:
        loader = SpecYamlLoader(text)  # reads the text at once: a character YAML forbids fails here
        root = loader.get_single_node()
        return (loader.construct_document(root) if root is not None else None), root
    except _TooCostly as exc:
        mark = exc.problem_mark
        raise SpecFileError(source, f"line {mark.line + 1}: {exc.problem}", exc.hint) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise ConfigError(source, [f"{where}not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    finally:
        if loader is not None:
            loader.dispose()


def _line_index(root: yaml.Node | None) -> dict[tuple, int]:
    """Map each key path in a YAML document to its 1-based line, to point errors at the right line."""
    index: dict[tuple, int] = {}

    def walk(node: yaml.Node, path: tuple) -> None:
        index.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = (*path, key.value)
                index[sub] = key.start_mark.line + 1
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    if root is not None:
        walk(root, ())
    return index


def _fields_at(loc: tuple, root: type[BaseModel]) -> list[str]:
    """Valid field names of the model found at `loc` in the `root` model's tree (for 'did you mean')."""
    model: Any = root
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        fields = getattr(model, "model_fields", {})
        if part in fields:
            ann = fields[part].annotation
            model = next(
                (
                    a
                    for a in getattr(ann, "__args__", (ann,))
                    if isinstance(a, type) and issubclass(a, BaseModel)
                ),
                ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None,
            )
        elif part in {"label", "json", "regex", "text"}:
            continue  # pydantic puts the discriminator value in the loc of a tagged union
        else:
            return []
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def describe_errors(
    errors: list[Any], root: type[BaseModel], lines: dict[tuple, int] | None = None
) -> list[str]:
    """pydantic's validation errors of a `root` model as one line each: `[line N: ]field.path: what (got X)`,
    an unknown key with the nearest valid one. The spec, `TrainConfig` and the jobs API word errors alike."""
    lines = lines or {}
    problems: list[tuple[int, str]] = []
    for err in errors:
        if any(isinstance(p, str) and p.startswith("literal[") for p in err["loc"]):
            continue  # the 'auto' branch of an `auto | number` field: the number branch says more
        # Drop the union-member names pydantic puts in a loc (tags, 'constrained-int', 'function-after[...]').
        loc = tuple(
            p
            for p in err["loc"]
            if p not in {"label", "json", "regex", "text", "bool"}
            and not (isinstance(p, str) and ("[" in p or p.startswith("constrained-")))
        )
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        line = lines.get(loc) or lines.get(loc[:-1]) or 0
        where = f"line {line}: " if line else ""
        auto = " or 'auto'" if loc and loc[-1] in _AUTO_FIELDS else ""
        if err["type"] == "extra_forbidden":
            valid = _fields_at(loc[:-1], root)
            guess = nearest(str(loc[-1]), valid)
            tip = (
                f" (did you mean '{guess}'?)"
                if guess
                else f" (valid keys: {', '.join(valid)})"
                if valid
                else ""
            )
            problems.append((line, f"{where}unknown key '{dotted}'{tip}"))
        elif err["type"] == "missing":
            problems.append((line, f"{where}'{dotted}' is required"))
        elif err["type"] == "union_tag_invalid":
            problems.append((line, f"{where}{dotted}: type must be one of label, json, regex, text"))
        else:
            msg = err["msg"].removeprefix("Value error, ") + auto
            got = err.get("input")
            shown = f" (got {got!r})" if got is not None and not isinstance(got, (dict, list)) else ""
            # A whole-model check's message names its own fields.
            problems.append((line, f"{where}{dotted + ': ' if loc else ''}{msg}{shown}"))
    return [text for _, text in sorted(problems, key=lambda p: p[0])]


_AUTO_FIELDS = {
    "epochs",
    "learning_rate",
    "batch_size",
    "lora_rank",
    "lora_alpha",
    "max_length",
    "micro_batch_tokens",
    "micro_batch_workers",
    "max_new_tokens",
    "constrained",
    "eval_every",
    "checkpoint_every",
}


def parse_spec(text: str, source: str = "tunewise.yaml") -> Spec:
    """Parse and validate spec text; raises ConfigError listing every problem."""
    raw, root = load_yaml_bounded(text, source)
    if not isinstance(raw, dict):
        raise ConfigError(source, ["the file must be a YAML mapping with at least 'task' and 'data'"])
    try:
        return Spec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, describe_errors(exc.errors(), Spec, _line_index(root))) from None


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    if not path.is_file():
        from tunewise.errors import TunewiseError

        raise TunewiseError(f"no task spec at {path}", hint="run `tunewise init` to create one")
    with path.open("rb") as f:
        data = f.read(MAX_SPEC_BYTES + 1)
    if len(data) > MAX_SPEC_BYTES:
        raise SpecFileError(
            str(path),
            f"the file is larger than {MAX_SPEC_BYTES >> 20} MiB, far more than any task spec needs",
            "check that this is the task spec; large values (schemas, prompts) belong in the spec only once",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecFileError(
            str(path),
            f"line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column})",
            "save the file as UTF-8",
        ) from None
    return parse_spec(text, source=str(path))
