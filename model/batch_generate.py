"""Batch generation jobs: a prompt file in, one mp4 + one GENERATIONS row per prompt out.

Idempotent: each prompt's row is its own small Parquet part (``rows/part-<prompt_id>``,
atomic), and a prompt whose part says ``ok`` is skipped on rerun; failed rows (an exception,
or NaN frames) are retried. The job's settings are pinned in ``job.json``: rerunning a job
folder with other settings is refused instead of mixing videos of two setups.

Methods (RAGME §4's comparison): ``ragme`` (adapter + RagInit), ``ragca`` (adapter, no
RagInit), ``raginit`` (RagInit only, no adapter), ``base``, ``freeinit`` (base + FreeInit).
With several GPUs one worker process per GPU takes every n-th prompt.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ragvid.schemas import GENERATIONS, GenerationConfig, read_table, write_table
from ragvid.schemas.io import read_json, write_json_atomic
from ragvid.schemas.tables import timings_cell, timings_of

from .retrieval_source import RetrievalSource

METHODS = ("ragme", "ragca", "raginit", "base", "freeinit")


def parse_method(spec: str, config: GenerationConfig) -> tuple[str, GenerationConfig]:
    """``name`` or ``name@k=N`` (the K ablation of RAGME Fig. 4) → (name, config for it)."""
    name, _, opt = spec.partition("@")
    if name not in METHODS:
        raise ValueError(f"unknown method '{spec}'. Available: {', '.join(METHODS)} (+ '@k=N')")
    if not opt:
        return name, config
    key, _, val = opt.partition("=")
    if key != "k" or not val.isdigit() or int(val) < 1:
        raise ValueError(f"method '{spec}': the only option is '@k=<positive int>'")
    return name, config.model_copy(update={"k": int(val)})


PROMPT_COLUMNS = ("prompt", "caption", "text")


@dataclass
class PromptList:
    """Prompts read from a file: blank lines skipped, duplicates kept once and reported."""

    prompts: list[str]
    source: str
    blank: int = 0
    duplicates: list[dict] = field(default_factory=list)


def read_prompts(path: str | os.PathLike) -> PromptList:
    """One prompt per line (.txt), or a ``prompt``/``caption``/``text`` column (.csv/.parquet)."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prompt file {path} not found")
    suffix = Path(path).suffix.lower()
    if suffix in (".txt", ".prompts", ""):
        with open(path, encoding="utf-8") as fh:
            raw = [(i + 1, line.rstrip("\n")) for i, line in enumerate(fh)]
    elif suffix in (".csv", ".parquet"):
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        table = pcsv.read_csv(path) if suffix == ".csv" else pq.read_table(path)
        col = next((c for c in PROMPT_COLUMNS if c in table.column_names), None)
        if col is None:
            raise ValueError(
                f"{path}: no prompt column — name one of {list(PROMPT_COLUMNS)} "
                f"(columns found: {table.column_names})"
            )
        first = 2 if suffix == ".csv" else 1  # csv: line 1 is the header
        raw = [(first + i, v or "") for i, v in enumerate(table.column(col).to_pylist())]
    else:
        raise ValueError(
            f"{path}: unsupported prompt file type '{suffix}' — use .txt, .csv, .parquet"
        )
    out = PromptList([], path)
    seen: dict[str, int] = {}
    for line, text in raw:
        text = str(text).strip()
        if not text:
            out.blank += 1
            continue
        if text in seen:
            out.duplicates.append({"line": line, "prompt": text, "first_line": seen[text]})
            continue
        seen[text] = line
        out.prompts.append(text)
    if not out.prompts:
        raise ValueError(f"{path}: no prompts (only blank lines?)")
    return out


def prompt_id(prompt: str, seed: int, method: str) -> str:
    return hashlib.sha1(f"{method}|{seed}|{prompt}".encode()).hexdigest()[:16]


@dataclass
class GenerateReport:
    job_dir: str
    table: pa.Table
    generated: int = 0
    skipped: int = 0
    failed: int = 0
    blank: int = 0
    duplicates: list[dict] = field(default_factory=list)
    gallery: str | None = None
    scheduler: str | None = None  # the sampler's class name (GenerationConfig.scheduler)


def _frames_for(pipe, method: str, prompt: str, retrieval, cfg: GenerationConfig, gen):
    """Run one method; returns (frames (F,H,W,3) float [0,1], retrieved batch or None, timings)."""
    kwargs = dict(
        num_inference_steps=cfg.num_inference_steps,
        guidance_scale=cfg.guidance_scale,
        num_frames=cfg.num_frames,
        height=cfg.height,
        width=cfg.width,
        generator=gen,
    )
    if method == "freeinit":
        from .freeinit import freeinit_generate

        frames, timings = freeinit_generate(
            pipe, prompt, cfg.freeinit, negative_prompt=cfg.negative_prompt, **kwargs
        )
        return frames, None, timings
    needs_adapter = method in ("ragme", "ragca")
    if needs_adapter and pipe.adapter is None:
        raise ValueError(f"method '{method}' needs a trained adapter: pass --adapter <run dir>")
    if method != "base" and retrieval is None:
        raise ValueError(f"method '{method}' needs a retrieval database: pass --index <name>")
    adapter = pipe.adapter
    if not needs_adapter:
        pipe.set_adapter(None)
    try:
        out = pipe(
            prompt,
            retrieval=None if method == "base" else retrieval,
            k=cfg.k,
            rag_init=method in ("ragme", "raginit") and (cfg.rag_init or method == "raginit"),
            negative_prompt=cfg.negative_prompt,
            output_type="np",
            **kwargs,
        )
    finally:
        if not needs_adapter:
            pipe.set_adapter(adapter)
    batch = None
    if out.retrieved_ids is not None:
        batch = (out.retrieved_ids[0], out.retrieved_scores[0], out.retrieved_mask[0])
    return out.frames[0], batch, dict(out.timings)


def generate_prompts(
    job_dir: str | os.PathLike,
    prompts: Sequence[str],
    pipe,
    retrieval: RetrievalSource | None,
    config: GenerationConfig,
    *,
    method: str = "ragme",
    model_id: str = "",
    index_id: str | None = None,
    on_done: Callable[[dict], None] | None = None,
) -> tuple[int, int, int]:
    """Generate every prompt not already done into ``job_dir``; returns (new, skipped, failed).

    One prompt's failure is recorded as a failed row and the job goes on.
    """
    from .video_io import export_to_mp4

    name, config = parse_method(method, config)
    job = Path(job_dir)
    rows_dir, videos = job / "rows", job / "videos"
    new = skipped = failed = 0
    for prompt in prompts:
        pid = prompt_id(prompt, config.seed, method)
        part = rows_dir / f"part-{pid}.parquet"
        if part.is_file():
            done = read_table(part, GENERATIONS).to_pylist()[0]
            if done["status"] == "ok" and done["model_id"] == model_id:
                skipped += 1
                continue
        gen = torch.Generator(device="cpu").manual_seed(config.seed)
        row = {
            "prompt_id": pid,
            "prompt": prompt,
            "seed": config.seed,
            "method": method,
            "video_path": None,
            "retrieved_ids": [],
            "retrieved_scores": [],
            "retrieved_mask": [],
            "timings": [],
            "model_id": model_id,
            "index_id": index_id,
            "status": "ok",
            "error": None,
        }
        try:
            frames, batch, timings = _frames_for(pipe, name, prompt, retrieval, config, gen)
            if batch is None and retrieval is not None and name in ("base", "freeinit"):
                r = retrieval.retrieve([prompt], config.k)  # recorded for the similarity metric
                batch = (r.ids[0], r.scores[0], r.mask[0])
            if batch is not None:
                row["retrieved_ids"] = [None if i is None else str(i) for i in batch[0]]
                row["retrieved_scores"] = [float(s) for s in batch[1]]
                row["retrieved_mask"] = [bool(m) for m in batch[2]]
            row["timings"] = timings_cell(timings)
            if not np.isfinite(frames).all():
                raise FloatingPointError(
                    "the generated frames contain NaN/inf (try fp32, fewer guidance, or check "
                    "the adapter)"
                )
            row["video_path"] = export_to_mp4(frames, videos / f"{pid}.mp4", config.fps)
            new += 1
        except Exception as exc:  # noqa: BLE001 - one bad prompt never kills the job
            row.update(status="failed", error=f"{exc.__class__.__name__}: {exc}"[:2000])
            failed += 1
        write_table(part, pa.Table.from_pylist([row], schema=GENERATIONS.schema()), GENERATIONS)
        if on_done:
            on_done(row)
    return new, skipped, failed


def _job_settings(
    config: GenerationConfig,
    method: str,
    model_id: str,
    index_id: str | None,
    scheduler: str | None = None,
):
    settings = {
        "generation": config.model_dump(),
        "method": method,
        "model_id": model_id,
        "index_id": index_id,
    }
    if scheduler is not None:
        settings["scheduler"] = scheduler  # the sampler actually used (its class name)
    return settings


def consolidate(job_dir: str | os.PathLike) -> pa.Table:
    """Merge the per-prompt parts into ``generations.parquet`` (sorted by prompt_id)."""
    job = Path(job_dir)
    parts = sorted((job / "rows").glob("part-*.parquet"))
    tables = [read_table(p, GENERATIONS) for p in parts]
    table = pa.concat_tables(tables) if tables else GENERATIONS.schema().empty_table()
    table = table.sort_by("prompt_id")
    write_table(job / "generations.parquet", table, GENERATIONS)
    return table


def write_gallery(job_dir: str | os.PathLike, table: pa.Table) -> str:
    """A markdown gallery (one line per video) — the Prefect artifact of the job."""
    lines = [
        "| prompt | method | status | video | retrieved | total s |",
        "|---|---|---|---|---|---|",
    ]
    for r in table.to_pylist():
        got = ", ".join(
            i for i, m in zip(r["retrieved_ids"], r["retrieved_mask"], strict=False) if m and i
        )
        total = timings_of(r["timings"]).get("total", float("nan"))
        video = f"[mp4]({r['video_path']})" if r["video_path"] else (r["error"] or "")[:80]
        prompt = r["prompt"].replace("|", "/")
        lines.append(
            f"| {prompt} | {r['method']} | {r['status']} | {video} | {got} | {total:.2f} |"
        )
    path = Path(job_dir) / "gallery.md"
    tmp = path.with_name(".gallery.md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return str(path)


def batch_generate(
    job_dir: str | os.PathLike,
    prompts: str | os.PathLike | Sequence[str],
    pipe,
    retrieval: RetrievalSource | None,
    config: GenerationConfig,
    *,
    method: str = "ragme",
    model_id: str = "",
    index_id: str | None = None,
    on_done: Callable[[dict], None] | None = None,
) -> GenerateReport:
    """Run a generation job in this process (one device); reruns skip finished prompts.

    The pipeline samples with ``config.scheduler`` (see ``use_scheduler``); its class name is
    pinned in ``job.json`` and returned as ``GenerateReport.scheduler``.
    """
    from .schedulers import use_scheduler

    sampler = use_scheduler(pipe, config.scheduler)  # unknown names fail before any I/O
    plist = prompts if isinstance(prompts, PromptList) else None
    if plist is None:
        if isinstance(prompts, (str, os.PathLike)):
            plist = read_prompts(prompts)
        else:
            plist = PromptList([p for p in dict.fromkeys(s.strip() for s in prompts) if p], "list")
    job = Path(job_dir)
    _pin_settings(job, _job_settings(config, method, model_id, index_id, sampler))
    new, skipped, failed = generate_prompts(
        job,
        plist.prompts,
        pipe,
        retrieval,
        config,
        method=method,
        model_id=model_id,
        index_id=index_id,
        on_done=on_done,
    )
    table = consolidate(job)
    return GenerateReport(
        str(job),
        table,
        new,
        skipped,
        failed,
        plist.blank,
        plist.duplicates,
        write_gallery(job, table),
        sampler,
    )


def _pin_settings(job: Path, settings: dict) -> None:
    """A job keeps one set of settings. A new model (a retrained adapter: its id hashes the
    weights) regenerates every prompt; the previous model's rows and videos are kept under
    ``superseded/<n>/`` rather than overwritten."""
    pin = job / "job.json"
    if pin.is_file():
        old = read_json(str(pin))
        if old != settings:
            diff = sorted(k for k in settings if old.get(k) != settings[k])
            if diff != ["model_id"]:
                raise ValueError(
                    f"{job} holds a generation job made with other settings ({diff} differ) — "
                    "use a new --job name, or delete the folder to regenerate"
                )
            keep = job / "superseded" / str(len(list((job / "superseded").glob("*"))))
            keep.mkdir(parents=True)
            for name in ("rows", "videos", "job.json", "generations.parquet"):
                if (job / name).exists():
                    os.replace(job / name, keep / name)
            write_json_atomic(str(pin), settings)
    else:
        job.mkdir(parents=True, exist_ok=True)
        write_json_atomic(str(pin), settings)


def pc_count(table: pa.Table, status: str) -> int:
    return sum(1 for s in table.column("status").to_pylist() if s == status)
