"""What an evaluation scores, chosen once for the CLI and the flow: prompts, reference videos,
and the leakage guard between them and the retrieval database.

RAGME §4's protocol: captions of WebVid *val* are the prompts, val videos the FVD reference,
and the database is built on *train*. With a corpus split (``ragvid corpus split``) that is the
default here; whatever the prompts and references are, :func:`plan_evaluation` checks them
against the index (ids, and near-duplicate copies through the index's duplicates table) and
refuses an overlap — naming the ids — unless it is explicitly allowed, in which case the
report says so on its first line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ragvid.flows.resolve import Resolver
from ragvid.pipelines.index.overlap import Overlap, index_overlap


class LeakageError(ValueError):
    """The retrieval database holds videos the evaluation scores against."""


@dataclass
class EvalInputs:
    prompts: list[str]
    prompt_ids: list[str | None]  # the val video each prompt is the caption of (None: a file)
    reference: list[str]  # uris of the real videos for FVD / KVD
    reference_ids: list[str]
    protocol: str  # one line for the report
    overlap: Overlap
    allowed_overlap: bool = False
    notes: list[str] = field(default_factory=list)


def plan_evaluation(
    res: Resolver,
    *,
    index: str,
    corpus: str,
    prompts: list[str] | None = None,
    num_prompts: int = 4,
    reference_corpus: str | None = None,
    reference_count: int = 256,
    split: str = "val",
    allow_overlap: bool = False,
) -> EvalInputs:
    """Prompts (``prompts``, else the captions of ``corpus``'s ``split`` side), reference
    videos (``reference_corpus``'s ``split`` side when it has a split, else its videos), and
    the overlap check against ``index``."""
    notes: list[str] = []
    ref_corpus = reference_corpus or corpus
    if prompts is None:
        rows = res.reference_rows(corpus, None, split=split)
        seen: dict[str, str] = {}
        for r in rows:
            seen.setdefault(r["caption"], r["video_id"])
            if len(seen) >= num_prompts:
                break
        if not seen:
            raise ValueError(f"corpus '{corpus}' has no {split} videos to take prompts from")
        prompt_list, prompt_ids = list(seen), list(seen.values())
        source = f"{len(prompt_list)} {split} captions of '{corpus}'"
    else:
        prompt_list, prompt_ids = list(prompts), [None] * len(prompts)
        source = f"{len(prompt_list)} prompts from a file"
    if res.split_table(ref_corpus) is not None:
        ref_rows = res.reference_rows(ref_corpus, reference_count, split=split)
        ref_what = f"{split} videos of '{ref_corpus}'"
    else:
        ref_rows = res.reference_rows(ref_corpus, reference_count)
        ref_what = f"videos of '{ref_corpus}' (no split: all of them)"
        notes.append(
            f"reference corpus '{ref_corpus}' has no train / val split; its videos were checked "
            "against the index one by one"
        )
    ref_ids = [r["video_id"] for r in ref_rows]
    checked = ref_ids + [i for i in prompt_ids if i is not None]
    overlap = index_overlap(res.index(index), checked)
    if overlap.warning:
        notes.append(f"leakage check: {overlap.warning}")
    if overlap and not allow_overlap:
        raise LeakageError(
            overlap.describe("reference videos and prompt sources")
            + " — the evaluation would score retrieved copies, not generations. Build the index "
            f"on train (`ragvid corpus split {corpus}` then `ragvid index build`), use another "
            "reference corpus, or pass --allow-overlap to measure it anyway (the report says so)"
        )
    protocol = (
        f"prompts: {source}; FVD/KVD reference: {len(ref_rows)} {ref_what}; database: index "
        f"'{index}'; "
        + (
            f"LEAKAGE ALLOWED — {overlap.describe('reference videos and prompt sources')}"
            if overlap
            else f"held out: {overlap.describe('reference videos and prompt sources')}"
        )
    )
    if prompts is not None:
        notes.append(
            "prompts came from a file: their source videos are unknown, so only the reference "
            "videos were checked against the index"
        )
    return EvalInputs(
        prompt_list,
        prompt_ids,
        [r["uri"] for r in ref_rows],
        ref_ids,
        protocol,
        overlap,
        bool(overlap) and allow_overlap,
        notes,
    )
