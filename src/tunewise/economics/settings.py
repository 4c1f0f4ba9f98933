"""Economics settings: one shape for `tunewise cost`, `tunewise decide`, `tunewise train --dry-run` and the
pipeline's economics and verdict stages.

Precedence: built-in defaults < the spec's `economics` section < command-line flags. `economics_settings()` is
the one place that applies it; `Economics.cost_request()` turns the settings into the economics API's request.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunewise.economics.cost import DATA_PREPARATION_COST, RETRAIN_EVERY_DAYS
from tunewise.errors import TunewiseError

if TYPE_CHECKING:
    from tunewise.economics.plan import ArmTokens, CostRequest
    from tunewise.economics.pricing import Catalog
    from tunewise.spec import EconomicsSpec


class Economics(BaseModel):
    """What pricing needs: the stated volume, where to price, the retraining cadence, the value of an accuracy
    point, and optionally per-query costs and hosting given directly instead of measured tokens x the catalog."""

    model_config = ConfigDict(extra="forbid")

    queries_per_day: float = Field(ge=0)
    platforms: list[str] = Field(default_factory=list)
    retrain_every_days: float = Field(default=RETRAIN_EVERY_DAYS, gt=0)
    value_per_accuracy_point: float | None = Field(default=None, ge=0)
    data_preparation_cost: float = Field(default=DATA_PREPARATION_COST, ge=0)
    team_size: int | None = Field(default=None, ge=1)  # the platform and team rules read it
    pricing_file: Path | None = None  # the spec's pricing override, resolved against the spec's folder
    prompted_cost: float | None = None
    tuned_cost: float | None = None
    hosting_per_hour: float | None = None
    hosting_per_month: float | None = None
    training_cost: float | None = None
    # Retrieval (the rag arms): given per-query costs, the vector index priced, the embedding price and the
    # corpus size (from the evaluation's record, or --corpus-tokens).
    rag_cost: float | None = None
    rag_tuned_cost: float | None = None
    vector_db: Literal["embedded", "managed"] = "embedded"
    vector_db_per_month: float | None = Field(default=None, ge=0)
    embedding_per_million_tokens: float = Field(default=0.0, ge=0)
    corpus_tokens: float | None = Field(default=None, ge=0)

    def catalog(self, override: Path | None = None) -> Catalog:
        """The built-in pricing catalog with the spec's pricing file, then `override`, applied."""
        from tunewise.economics.pricing import load_catalog

        return load_catalog(self.pricing_file, override)

    def cost_request(
        self,
        arms: Sequence[ArmTokens] = (),
        training_tokens: float | None = None,
        epochs: float = 1.0,
        training_hours: float | None = None,
        rag_training_tokens: float | None = None,
        rag_training_hours: float | None = None,
    ) -> CostRequest:
        """The economics API's request for these settings and, optionally, measured tokens per arm."""
        from tunewise.economics.plan import CostRequest

        return CostRequest(
            queries_per_day=self.queries_per_day,
            prompted_cost=self.prompted_cost,
            tuned_cost=self.tuned_cost,
            hosting_per_hour=self.hosting_per_hour,
            hosting_per_month=self.hosting_per_month,
            platforms=list(self.platforms),
            arms=list(arms),
            training_cost=self.training_cost,
            training_tokens=training_tokens,
            epochs=epochs,
            retrain_every_days=self.retrain_every_days,
            training_hours=training_hours,
            rag_training_tokens=rag_training_tokens,
            rag_training_hours=rag_training_hours,
            data_preparation_cost=self.data_preparation_cost,
            rag_cost=self.rag_cost,
            rag_tuned_cost=self.rag_tuned_cost,
            vector_db=self.vector_db,
            vector_db_per_month=self.vector_db_per_month,
            embedding_per_million_tokens=self.embedding_per_million_tokens,
            corpus_tokens=self.corpus_tokens,
        )


def parse_platforms(value: str | None) -> list[str] | None:
    """A comma-separated --platform value as a list (None when the flag was not given).

    >>> parse_platforms("together, vertex,"), parse_platforms(None)
    (['together', 'vertex'], None)
    """
    if value is None:
        return None
    return [p.strip() for p in value.split(",") if p.strip()]


def spec_economics(spec_path: Path | None) -> tuple[EconomicsSpec | None, Path | None]:
    """The spec's economics section and the folder its pricing file is relative to; (None, None) without a spec."""
    if spec_path is None:
        return None, None
    from tunewise.spec import load_spec

    return load_spec(spec_path).economics, spec_path.parent


def economics_settings(
    spec: EconomicsSpec | None,
    root: Path | None = None,
    *,
    queries_per_day: float | None = None,
    platforms: str | list[str] | None = None,
    retrain_every_days: float | None = None,
    value_per_accuracy_point: float | None = None,
    team_size: int | None = None,
    vector_db: str | None = None,
    vector_db_per_month: float | None = None,
    embedding_per_million_tokens: float | None = None,
    **costs: Any,
) -> Economics:
    """The settings in force: each flag given wins over the spec's value, which wins over the default.

    `costs` are the direct prices (prompted_cost, tuned_cost, rag_cost, rag_tuned_cost, hosting_per_hour,
    hosting_per_month, training_cost) and corpus_tokens. Without --platform, the spec's platforms are priced unless hosting was given directly.

    >>> from tunewise.spec import EconomicsSpec
    >>> s = economics_settings(EconomicsSpec(queries_per_day=200), platforms="together", queries_per_day=50)
    >>> s.queries_per_day, s.platforms, s.retrain_every_days
    (50.0, ['together'], 91.0)
    """
    qpd = queries_per_day if queries_per_day is not None else (spec.queries_per_day if spec else None)
    if qpd is None:
        raise TunewiseError("no volume given", hint="pass --queries-per-day N (or --spec tunewise.yaml)")
    chosen = parse_platforms(platforms) if isinstance(platforms, str) else platforms
    if chosen is None:
        explicit_hosting = (
            costs.get("hosting_per_hour") is not None or costs.get("hosting_per_month") is not None
        )
        chosen = list(spec.platforms) if spec is not None and not explicit_hosting else []
    if vector_db is not None and vector_db not in ("embedded", "managed"):
        from tunewise.errors import nearest

        guess = nearest(vector_db, ["embedded", "managed"])
        raise TunewiseError(
            f"unknown vector database '{vector_db}'" + (f" (did you mean '{guess}'?)" if guess else ""),
            hint="--vector-db embedded (FAISS on the serving machine, $0/month) or managed (a vector database server)",
        )
    pricing_file = None
    if spec is not None and spec.pricing_file:
        pricing_file = (root or Path.cwd()) / spec.pricing_file
    return Economics(
        queries_per_day=qpd,
        platforms=chosen,
        retrain_every_days=retrain_every_days
        if retrain_every_days is not None
        else (spec.retrain_every_days if spec is not None else RETRAIN_EVERY_DAYS),
        value_per_accuracy_point=value_per_accuracy_point
        if value_per_accuracy_point is not None
        else (spec.value_per_accuracy_point if spec is not None else None),
        pricing_file=pricing_file,
        data_preparation_cost=spec.data_preparation_cost if spec is not None else DATA_PREPARATION_COST,
        team_size=team_size if team_size is not None else (spec.team_size if spec is not None else None),
        vector_db=vector_db or (spec.vector_db if spec is not None else "embedded"),
        vector_db_per_month=vector_db_per_month
        if vector_db_per_month is not None
        else (spec.vector_db_per_month if spec is not None else None),
        embedding_per_million_tokens=embedding_per_million_tokens
        if embedding_per_million_tokens is not None
        else (spec.embedding_per_million_tokens if spec is not None else 0.0),
        **costs,
    )


__all__ = ["Economics", "economics_settings", "parse_platforms", "spec_economics"]
