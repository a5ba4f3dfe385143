"""Request bodies of the search endpoints: the query, RAGME's filters and metadata predicates.

Defaults come from ``RetrievalConfig``: a field left out of a request means the config's
value; ``"delta_min": null`` / ``"delta_dedup": null`` sent explicitly turn that filter off.
Unknown fields are refused (a typo must not silently search without its filter).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

from ragvid.schemas import RetrievalConfig
from ragvid.schemas.config import defaults

_RET = defaults(RetrievalConfig)

Scalar = StrictStr | StrictInt | StrictFloat | StrictBool
Values = Scalar | Annotated[list[Scalar], Field(min_length=1, max_length=1000)]
Similarity = Annotated[float, Field(ge=-1.0, le=1.0, allow_inf_nan=False)]

TextModeName = Literal["dense", "bm25", "hybrid", "hybrid-rerank", "rrf"]
TEXT_MODES: dict[str, str] = {  # the request's name → Retriever.search_text's mode
    "dense": "dense",
    "bm25": "bm25",
    "hybrid": "hybrid-rerank",
    "hybrid-rerank": "hybrid-rerank",
    "rrf": "rrf",
}
# which manifest column each named predicate reads
DURATION, SOURCE, PAGE_DIR, SPLIT = "duration_s", "source", "page_dir", "split"


class Where(BaseModel):
    """Predicates on the corpus manifest's columns (and its train / val split): a result must
    satisfy all of them. Lists mean "any of"."""

    model_config = ConfigDict(extra="forbid")

    duration_min: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    duration_max: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    source: Values | None = None
    page_dir: Values | None = None
    split: Literal["train", "val"] | None = None
    equals: dict[Annotated[str, Field(min_length=1)], Values] = Field(
        default_factory=dict, max_length=32, description="column → value (or values) to equal"
    )

    @model_validator(mode="after")
    def _range(self) -> Where:
        lo, hi = self.duration_min, self.duration_max
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"duration_min {lo:g} > duration_max {hi:g}: an empty range")
        return self

    def is_empty(self) -> bool:
        return not (
            self.duration_min is not None
            or self.duration_max is not None
            or self.source is not None
            or self.page_dir is not None
            or self.split is not None
            or self.equals
        )

    def column_values(self) -> list[tuple[str, list]]:
        """(column, allowed values) of every equality predicate, named ones first."""
        out = [(SOURCE, self.source), (PAGE_DIR, self.page_dir), *self.equals.items()]
        return [(c, v if isinstance(v, list) else [v]) for c, v in out if v is not None]


class Filters(BaseModel):
    """What every search request carries besides its query."""

    model_config = ConfigDict(extra="forbid")

    k: StrictInt = Field(_RET["k"], ge=1, description="results to return (padded to K)")
    delta_min: Similarity | None = Field(
        None,
        description="minimum similarity; left out: RetrievalConfig's for the query's modality "
        "(text: off, video/vector: 0.6); null: off",
    )
    delta_dedup: Similarity | None = Field(
        _RET["delta_dedup"], description="drop a result this similar to a kept one; null: off"
    )
    exclude_ids: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    exclude_groups: list[StrictInt] = Field(
        default_factory=list, description="near-duplicate group ids to leave out"
    )
    exclude_duplicates: StrictBool = Field(
        False,
        description="also leave out every member of the near-duplicate groups of the query "
        "video and of exclude_ids",
    )
    where: Where | None = None

    def config(self) -> RetrievalConfig:
        """The RetrievalConfig this request runs with (its unset fields: the defaults)."""
        return RetrievalConfig(k=self.k)

    def delta_min_for(self, modality: str) -> float | None:
        """δ_min for the query's modality: the request's (None: off) or the config's."""
        if "delta_min" in self.model_fields_set:
            return self.delta_min
        return self.config().delta_min(modality)


class TextQuery(Filters):
    text: Annotated[str, Field(min_length=1, max_length=2000)]
    mode: TextModeName = "dense"


class VideoQuery(Filters):
    video_id: Annotated[str, Field(min_length=1, max_length=1000)]


class VectorQuery(Filters):
    vector: Annotated[list[float], Field(min_length=1, max_length=65_536)]
