"""The pricing catalog: a data file shipped in the package, plus the user's overrides.

Each entry is one platform and model class; each figure carries its value, source and date. A figure whose
value is null is *unknown*: the catalog says so (with a note) and `Entry.require()` refuses to compute with it,
naming the entry and the field, instead of inventing a number.

Overrides come from a YAML file of the same shape (`--pricing FILE`, or `economics.pricing_file` in
tunewise.yaml). An override entry with a known id replaces only the fields it names; a new id adds an entry.
A figure may be written in full (`{value, source, date, note}`) or as a bare number, whose source is then the
override file.
"""

from __future__ import annotations

import datetime as _dt
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunewise.errors import ConfigError, TunewiseError, nearest

BUILTIN_SOURCE = "tunewise/economics/pricing.yaml"

# The figures an entry can carry; the unit is part of the name.
FIGURE_FIELDS = (
    "training_per_million_tokens",
    "training_per_hour",
    "inference_input_per_million_tokens",
    "inference_output_per_million_tokens",
    "hosting_per_hour",
    "hosting_per_month",
    "throughput_tokens_per_second",
    "minimum_billing",
)


class Figure(BaseModel):
    """One price (or rate) with its provenance. `value=None` means the source gives no number."""

    model_config = ConfigDict(extra="forbid")

    value: float | None = Field(description="The number, or null when the source gives none.")
    source: str = Field(min_length=1, description="Where the number comes from.")
    date: str = Field(min_length=1, description="When the source was read (YYYY-MM or YYYY-MM-DD).")
    note: str | None = None
    unit: str | None = None

    @field_validator("date", mode="before")
    @classmethod
    def _date_text(cls, value: Any) -> Any:
        # YAML reads 2026-05-01 as a date object; keep the text form.
        return value.isoformat() if isinstance(value, (_dt.date, _dt.datetime)) else value

    @field_validator("value")
    @classmethod
    def _not_negative(cls, value: float | None) -> float | None:
        if value is not None and value < 0:
            raise ValueError(f"a price cannot be negative (got {value})")
        return value

    @model_validator(mode="after")
    def _unknown_says_why(self) -> Figure:
        if self.value is None and not self.note:
            raise ValueError("value is null: add a note saying why (e.g. 'the vendor publishes no number')")
        return self

    @property
    def known(self) -> bool:
        return self.value is not None

    def age_days(self, today: _dt.date | None = None) -> int | None:
        """Days since the figure's date (a month-only date counts from its first day); None without a date.

        >>> Figure(value=1.0, source="x", date="2026-05").age_days(_dt.date(2026, 12, 7))
        220
        >>> Figure(value=1.0, source="x", date="2026-12-01").age_days(_dt.date(2026, 12, 7))
        6
        """
        dated = parse_date(self.date)
        if dated is None:
            return None
        return ((today or _dt.date.today()) - dated).days


STALE_AFTER_DAYS = 90  # past this, `tunewise pricing` warns: vendors reprice often
GUIDE_SOURCE_PREFIX = "practitioner's guide (docs/guide.md)"
MODEL_SOURCE_PREFIX = "tunewise cost model (docs/economics.md)"


def parse_date(text: str) -> _dt.date | None:
    """A figure's date as a date: YYYY-MM-DD, or YYYY-MM (its first day); None when it is not one.

    >>> parse_date("2026-05"), parse_date("2026-12-07"), parse_date("-")
    (datetime.date(2026, 5, 1), datetime.date(2026, 12, 7), None)
    """
    for fmt in ("%Y-%m-%d", "%Y-%m"):
        try:
            return _dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    return None


def source_kind(source: str) -> str | None:
    """What a shipped figure's source is: 'url' (a vendor's page), 'guide' (the practitioner's guide), 'model'
    (tunewise's own documented cost model: a GPU paid by the hour has no per-token price), or None.

    >>> source_kind("https://aws.amazon.com/bedrock/pricing/"), source_kind("my notes")
    ('url', None)
    """
    if source.startswith(("https://", "http://")) and " " not in source:
        return "url"
    if source.startswith(GUIDE_SOURCE_PREFIX):
        return "guide"
    if source.startswith(MODEL_SOURCE_PREFIX):
        return "model"
    return None


def _unknown(note: str) -> Figure:
    return Figure(value=None, source="not given", date="-", note=note)


class Entry(BaseModel):
    """One platform and model class."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        pattern=r"^[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*$", description="platform/model-class"
    )
    platform: str = Field(min_length=1)
    model_class: str = Field(min_length=1)
    default: bool = Field(default=False, description="The entry used when only the platform is named.")
    description: str = ""
    # Who pays the hosting hours: only the fine-tuned deployment (managed platforms, whose base models are
    # billed per token), or every arm (a self-hosted GPU serves the base model too).
    hosting_applies_to: Literal["fine-tuned", "all"] = "fine-tuned"
    training_per_million_tokens: Figure = Field(default_factory=lambda: _unknown("not given"))
    training_per_hour: Figure = Field(default_factory=lambda: _unknown("not given"))
    inference_input_per_million_tokens: Figure = Field(default_factory=lambda: _unknown("not given"))
    inference_output_per_million_tokens: Figure = Field(default_factory=lambda: _unknown("not given"))
    hosting_per_hour: Figure = Field(default_factory=lambda: _unknown("not given"))
    hosting_per_month: Figure = Field(default_factory=lambda: _unknown("not given"))
    throughput_tokens_per_second: Figure = Field(default_factory=lambda: _unknown("not given"))
    minimum_billing: Figure = Field(default_factory=lambda: _unknown("not given"))

    @model_validator(mode="after")
    def _consistent(self) -> Entry:
        if self.id.split("/", 1)[0] != self.platform:
            raise ValueError(f"id '{self.id}' must start with its platform '{self.platform}/'")
        if self.hosting_per_hour.known and self.hosting_per_month.known:
            raise ValueError("give hosting_per_hour or hosting_per_month, not both (one would silently win)")
        return self

    def require(self, field: str) -> float:
        """The value of a figure, or a TunewiseError naming this entry and the field when it is unknown."""
        figure: Figure = getattr(self, field)
        if figure.value is None:
            raise TunewiseError(
                f"pricing entry '{self.id}': {field} is unknown ({figure.note})",
                hint=f"set it in a pricing override file: entries: [{{id: {self.id}, {field}: NUMBER}}] "
                "and pass --pricing FILE (or economics.pricing_file in tunewise.yaml)",
            )
        return figure.value

    def hosting_monthly(self, days: float = 30.0) -> float:
        """Monthly hosting in dollars: per hour x 24 x days, or the monthly figure."""
        if self.hosting_per_hour.known:
            return float(self.hosting_per_hour.value) * 24.0 * days  # type: ignore[arg-type]
        if self.hosting_per_month.known:
            return float(self.hosting_per_month.value) * days / 30.0  # type: ignore[arg-type]
        return self.require("hosting_per_hour")  # raises, naming the field


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    entries: list[Entry]
    sources: list[str] = Field(default_factory=list, description="Files merged into this catalog, in order.")

    @model_validator(mode="after")
    def _unique(self) -> Catalog:
        ids = [e.id for e in self.entries]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"entry ids repeat: {', '.join(dupes)}")
        return self

    @property
    def platforms(self) -> list[str]:
        return list(dict.fromkeys(e.platform for e in self.entries))

    def get(self, name: str) -> Entry:
        """An entry by id (`together/lora-up-to-16b`) or by platform (`together`: its default entry)."""
        for entry in self.entries:
            if entry.id == name:
                return entry
        candidates = [e for e in self.entries if e.platform == name]
        if candidates:
            return next((e for e in candidates if e.default), candidates[0])
        guess = nearest(name, [*self.platforms, *(e.id for e in self.entries)])
        raise TunewiseError(
            f"no pricing entry or platform named '{name}'" + (f" (did you mean '{guess}'?)" if guess else ""),
            hint=f"known platforms: {', '.join(self.platforms)}; `tunewise pricing` lists every entry",
        )


# --- loading -------------------------------------------------------------------------------------------


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    from tunewise.spec import load_yaml_bounded

    # The spec's bounded reader: a pricing file is user input too, and an alias bomb in it must not hang `cost`.
    raw, _ = load_yaml_bounded(text, source)
    if not isinstance(raw, dict) or not isinstance(raw.get("entries"), list):
        raise ConfigError(source, ["the file must be a YAML mapping with a list under 'entries'"])
    return raw


def _expand_figures(entry: dict[str, Any], source: str) -> dict[str, Any]:
    """Turn bare numbers into full figures whose source is the override file."""
    out = dict(entry)
    for field in FIGURE_FIELDS:
        value = out.get(field)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[field] = {
                "value": value,
                "source": f"override {source}",
                "date": _dt.date.today().isoformat(),
            }
    return out


def _problems(exc: ValidationError, entries: list[dict[str, Any]]) -> list[str]:
    """pydantic errors as 'entry X: field: message' lines, naming the entry the user wrote."""
    problems = []
    for error in exc.errors():
        loc = list(error["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "entries" and isinstance(loc[1], int):
            idx = loc[1]
            entry_id = entries[idx].get("id", f"#{idx + 1}") if idx < len(entries) else f"#{idx + 1}"
            where = f"entry '{entry_id}': "
            loc = loc[2:]
        field = ".".join(str(p) for p in loc)
        msg = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            if field.endswith(".value"):
                msg = "has no value (write value: null with a note if the price is unknown)"
            else:
                msg = "is required"
        elif error["type"] == "extra_forbidden":
            valid = list(Entry.model_fields) if len(loc) == 1 else list(Figure.model_fields)
            guess = nearest(str(loc[-1]), valid)
            msg = "unknown key" + (f" (did you mean '{guess}'?)" if guess else "")
        problems.append(f"{where}{field}: {msg}" if field else f"{where}{msg}")
    return problems


def _validate(raw: dict[str, Any], source: str) -> Catalog:
    try:
        return Catalog.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, _problems(exc, raw.get("entries", []))) from None


def load_builtin() -> Catalog:
    """The catalog shipped in the package."""
    text = resources.files("tunewise.economics").joinpath("pricing.yaml").read_text(encoding="utf-8")
    raw = _read_yaml(text, BUILTIN_SOURCE)
    raw["sources"] = [BUILTIN_SOURCE]
    return _validate(raw, BUILTIN_SOURCE)


def merge(base: Catalog, override: dict[str, Any], source: str) -> Catalog:
    """Apply an override mapping (already read from YAML) to a catalog, validating the result."""
    entries = [e.model_dump() for e in base.entries]
    by_id = {e["id"]: e for e in entries}
    raw_entries = override.get("entries") or []
    problems = []
    for i, item in enumerate(raw_entries):
        if not isinstance(item, dict) or not item.get("id"):
            problems.append(f"entry #{i + 1}: needs an 'id' (platform/model-class)")
            continue
        item = _expand_figures(item, source)
        if item["id"] in by_id:
            target = by_id[item["id"]]
            # Hosting is given per hour or per month: setting one replaces the other rather than clashing.
            for mine, other in (
                ("hosting_per_hour", "hosting_per_month"),
                ("hosting_per_month", "hosting_per_hour"),
            ):
                if (
                    isinstance(item.get(mine), dict)
                    and item[mine].get("value") is not None
                    and other not in item
                ):
                    target[other] = _unknown(f"replaced by {mine} from {source}").model_dump()
            target.update(item)  # field-level replacement of a known entry
        else:
            item.setdefault("platform", str(item["id"]).split("/", 1)[0])
            item.setdefault("model_class", str(item["id"]).split("/", 1)[-1])
            entries.append(item)
            by_id[item["id"]] = item
    if problems:
        raise ConfigError(source, problems)
    unknown_top = set(override) - {"version", "entries"}
    if unknown_top:
        raise ConfigError(
            source, [f"unknown top-level key '{k}' (expected 'entries')" for k in sorted(unknown_top)]
        )
    merged = {"version": base.version, "entries": entries, "sources": [*base.sources, source]}
    return _validate(merged, source)


def load_catalog(*override_files: str | Path | None) -> Catalog:
    """The built-in catalog with each override file applied in order (later files win)."""
    catalog = load_builtin()
    for path in override_files:
        if path is None:
            continue
        path = Path(path)
        if not path.is_file():
            raise TunewiseError(
                f"no pricing file at {path}",
                hint="check the path given to --pricing or economics.pricing_file",
            )
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(str(path), [f"byte {exc.start}: not UTF-8 text"]) from None
        catalog = merge(catalog, _read_yaml(text, str(path)), str(path))
    return catalog


def stale_figures(catalog: Catalog, today: _dt.date | None = None) -> list[tuple[Entry, int]]:
    """Each entry whose oldest dated figure is older than STALE_AFTER_DAYS, with that age in days."""
    stale = []
    for entry in catalog.entries:
        ages = [getattr(entry, f).age_days(today) for f in FIGURE_FIELDS]
        oldest = max((a for a in ages if a is not None), default=None)
        if oldest is not None and oldest > STALE_AFTER_DAYS:
            stale.append((entry, oldest))
    return stale


def _check_sourced(raw: dict[str, Any], source: str) -> None:
    """Every figure of an update file carries a value, a source and a date; one line per problem."""
    problems = []
    entries = raw.get("entries") or []
    for i, item in enumerate(entries):
        if not isinstance(item, dict) or not item.get("id"):
            problems.append(f"entry #{i + 1}: needs an 'id' (platform/model-class)")
            continue
        for field in FIGURE_FIELDS:
            if field not in item:
                continue
            figure = item[field]
            if not isinstance(figure, dict):
                problems.append(
                    f"entry '{item['id']}': {field}: give {{value, source, date}}, not a bare number "
                    "(where the price comes from, and when it was read)"
                )
                continue
            for key in ("source", "date"):
                if not str(figure.get(key) or "").strip():
                    problems.append(f"entry '{item['id']}': {field}: has no {key}")
            if figure.get("date") is not None and parse_date(str(figure["date"])) is None:
                problems.append(f"entry '{item['id']}': {field}: date '{figure['date']}' is not YYYY-MM-DD")
    if problems:
        raise ConfigError(source, problems)


def update_pricing_file(target: str | Path, update: str | Path) -> tuple[list[str], list[str]]:
    """Merge the figures of `update` into the user's pricing file `target` (created if absent).

    Every figure in `update` must carry its source and date. A known entry id gets the fields `update` names
    (field by field); a new id is added. The result is checked against the built-in catalog before the file
    is replaced atomically. Returns (entry ids updated, entry ids added)."""
    import yaml

    from tunewise.fileio import atomic_write_text

    update = Path(update)
    if not update.is_file():
        raise TunewiseError(
            f"no pricing file at {update}", hint="give the path of a YAML file of new figures"
        )
    raw_update = _read_yaml(update.read_text(encoding="utf-8"), str(update))
    unknown_top = set(raw_update) - {"version", "entries"}
    if unknown_top:
        raise ConfigError(
            str(update), [f"unknown top-level key '{k}' (expected 'entries')" for k in sorted(unknown_top)]
        )
    _check_sourced(raw_update, str(update))
    target = Path(target)
    current: dict[str, Any] = {"version": 1, "entries": []}
    if target.is_file():
        current = _read_yaml(target.read_text(encoding="utf-8"), str(target))
    by_id = {e.get("id"): e for e in current["entries"] if isinstance(e, dict)}
    updated, added = [], []
    for item in raw_update["entries"]:
        item = {k: (_plain(v) if k in FIGURE_FIELDS else v) for k, v in item.items()}
        if item["id"] in by_id:
            by_id[item["id"]].update(item)
            updated.append(item["id"])
        else:
            current["entries"].append(item)
            by_id[item["id"]] = item
            added.append(item["id"])
    # Refuse a file that would no longer load (a misspelt field, a negative price, hosting given twice).
    merge(load_builtin(), current, str(target))
    text = (
        "# tunewise pricing overrides: every figure with its source and date (`tunewise pricing update`).\n"
    )
    text += yaml.safe_dump(current, sort_keys=False, allow_unicode=True)
    atomic_write_text(target, text)
    return updated, added


def _plain(figure: Any) -> Any:
    """A figure mapping with its date as text (YAML reads 2026-12-07 as a date object)."""
    if isinstance(figure, dict) and isinstance(figure.get("date"), (_dt.date, _dt.datetime)):
        return {**figure, "date": figure["date"].isoformat()}
    return figure


__all__ = [
    "Catalog",
    "Entry",
    "Figure",
    "FIGURE_FIELDS",
    "STALE_AFTER_DAYS",
    "load_builtin",
    "load_catalog",
    "merge",
    "parse_date",
    "source_kind",
    "stale_figures",
    "update_pricing_file",
]
