"""VIMI's memory engine and bulk retrieval (seed 003 §3.1): sharded BM25 (tantivy and bm25s),
the interleaved prompt, exclusions, resume after SIGKILL, the Ray executor."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest

from ragvid.pipelines.vimi.engine import MemoryEngine, build_engine
from ragvid.pipelines.vimi.normalise import normalise_caption
from ragvid.pipelines.vimi.prompt import placeholders, retrieval_prompt
from ragvid.pipelines.vimi.retrieve import FAULT, build_prompts
from ragvid.schemas import MANIFEST, Workspace
from ragvid.schemas.config import VimiConfig
from ragvid.schemas.io import join, part_name, read_parts, write_table
from ragvid.schemas.tables import IMAGE_MEMORY, VIMI_PROMPTS

WORDS = [f"{c}{v}" for c in "bcdfghjklm" for v in ("ar", "eo", "iu", "ol", "un", "ep")]


def memory_rows(n: int, seed: int, fixed_len: int | None = 8, prefix: str = "m") -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        length = fixed_len or int(rng.integers(4, 14))
        words = rng.choice(len(WORDS), size=length, replace=False)
        rows.append(
            {
                "item_id": f"{prefix}{i:05d}",
                "image_uri": f"/img/{prefix}{i:05d}.jpg",
                "caption": " ".join(WORDS[w] for w in words),
                "source": "test",
                "source_file": "test.parquet",
                "source_row": i,
            }
        )
    return rows


def write_memory(ws: Workspace, name: str, rows: list[dict], parts: int = 2) -> None:
    schema = IMAGE_MEMORY.schema()
    for p in range(parts):
        chunk = rows[p::parts]
        write_table(
            join(ws.memory_table(name), part_name(p)),
            pa.Table.from_pylist(chunk, schema=schema),
            IMAGE_MEMORY,
        )


def write_manifest(ws: Workspace, corpus: str, videos: list[tuple[str, str]], parts: int):
    schema = MANIFEST.schema()
    for p in range(parts):
        rows = [
            {
                "video_id": v,
                "uri": f"/videos/{v}.mp4",
                "caption": c,
                "source": "test",
                "source_file": "m.csv",
                "source_row": i,
            }
            for i, (v, c) in enumerate(videos)
            if i % parts == p
        ]
        write_table(
            join(ws.manifest(corpus), part_name(p)),
            pa.Table.from_pylist(rows, schema=schema),
            MANIFEST,
        )


def above_cut(hits: list[dict]) -> dict[float, set[str]]:
    """Items by (rounded) score, leaving out the last score level: which of several items tied
    at the cut an index returns is its own business, everything above it is not."""
    levels: dict[float, set[str]] = {}
    for h in hits:
        levels.setdefault(round(h["score"], 3), set()).add(h["item_id"])
    return dict(list(levels.items())[:-1])


def test_normalise_and_prompt():
    assert normalise_caption("  A DOG — runs, fast!! ") == "a dog runs fast"
    assert normalise_caption("a_dog\truns") == normalise_caption("A dog: runs.")
    assert normalise_caption("") == "" and normalise_caption(None) == ""
    got = [{"caption": "a red car"}, {"caption": "odd <image_2> text\nline"}, {"caption": "x"}]
    text = retrieval_prompt("a video <image_1> caption", got)
    lines = text.split("\n")
    assert lines[0] == "<image_1> a red car" and lines[-1].startswith("a video")
    assert len(lines) == 4 and placeholders(text) == [1, 2, 3]
    assert placeholders(retrieval_prompt("c", [], "[img{i}]"), "[img{i}]") == []
    with pytest.raises(ValueError, match="exactly once"):
        placeholders("x", "<image>")


def test_sharded_engine_matches_one_shard_and_backends_agree(tmp_path):
    """Equal-length captions: the global IDF makes 4 shards score exactly like one index, and
    bm25s like tantivy. Varying lengths: the per-shard average length is the only difference,
    so 4-shard tantivy and 4-shard bm25s (same shards) still agree exactly."""
    ws = Workspace.at(str(tmp_path))
    rows = memory_rows(300, seed=1)
    write_memory(ws, "four", rows)
    write_memory(ws, "one", rows)
    write_memory(ws, "varied", memory_rows(300, seed=2, fixed_len=None))
    queries = [r["caption"] for r in memory_rows(25, seed=3, fixed_len=5)]
    queries += ['bar AND (ceo OR -diu) "fol" ^2 ~ * : [lun TO mep]', "", "!!!", "zzz qqq"]
    engines = {}
    for name, engine, shards in [
        ("four", "tantivy", 4),
        ("one", "tantivy", 1),
        ("four", "bm25s", 4),
        ("varied", "tantivy", 4),
        ("varied", "bm25s", 4),
    ]:
        man = build_engine(ws, name, VimiConfig(engine=engine, memory_shards=shards))
        assert man["rows"] == 300 and len(man["shards"]) == shards
        assert sum(s["rows"] for s in man["shards"]) == 300
        eng = MemoryEngine.open(ws, name)
        engines[(name, engine)] = eng.search(queries, 5)
        eng.close()
    ref = engines[("one", "tantivy")]
    assert all(len(r) == 5 for r in ref[:26]) and ref[-3:] == [[], [], []]
    for other in (engines[("four", "tantivy")], engines[("four", "bm25s")]):
        for a, b in zip(ref, other, strict=True):
            assert [h["score"] for h in a] == pytest.approx([h["score"] for h in b], rel=1e-4)
            assert above_cut(a) == above_cut(b)
    for a, b in zip(engines[("varied", "tantivy")], engines[("varied", "bm25s")], strict=True):
        assert [h["score"] for h in a] == pytest.approx([h["score"] for h in b], rel=1e-4)
        assert above_cut(a) == above_cut(b)
    hit = ref[0][0]
    assert hit["uri"] == hit["image_uri"] == f"/img/{hit['item_id']}.jpg"
    assert set(hit) >= {"caption", "frame_ts", "video_id", "tar_offset", "tar_size", "score"}
    assert all(a["score"] >= b["score"] for r in ref for a, b in zip(r, r[1:], strict=False))


def test_engine_versions_reuse_and_rebuild(tmp_path):
    ws = Workspace.at(str(tmp_path))
    write_memory(ws, "m", memory_rows(120, seed=4), parts=2)
    cfg = VimiConfig(memory_shards=2)
    first = build_engine(ws, "m", cfg)
    assert not first["reused"] and first["built_because"] == "no engine yet"
    again = build_engine(ws, "m", cfg)
    assert again["reused"] and again["version"] == first["version"]
    extra = memory_rows(10, seed=5, prefix="x")
    write_table(
        join(ws.memory_table("m"), part_name(2)),
        pa.Table.from_pylist(extra, schema=IMAGE_MEMORY.schema()),
        IMAGE_MEMORY,
    )
    grown = build_engine(ws, "m", cfg)
    assert grown["built_because"] == "the memory changed" and grown["rows"] == 130
    assert grown["previous"] == first["version"] and grown["version"] > first["version"]
    other = build_engine(ws, "m", VimiConfig(memory_shards=3))
    assert other["built_because"].startswith("the engine config changed")
    versions = sorted(os.listdir(os.path.join(ws.memory_engine("m"), "versions")))
    assert versions == [grown["version"], other["version"]]  # current + the one it replaced
    eng = MemoryEngine.open(ws, "m")
    assert eng.version == other["version"] and eng.num_docs == 130
    assert eng.search([extra[0]["caption"]], 1)[0][0]["item_id"] == "x00000"


def _prompt_fixture(ws: Workspace, n_videos: int = 12, parts: int = 3) -> list[tuple[str, str]]:
    """A corpus whose first video's caption is in the memory 50 times (other casing /
    punctuation) and whose videos' own keyframes are in the memory with their captions."""
    base = memory_rows(n_videos, seed=7, fixed_len=6, prefix="v")
    videos = [(f"vid{i:03d}", r["caption"]) for i, r in enumerate(base)]
    mem = memory_rows(200, seed=8)
    q0 = videos[0][1]
    for j in range(50):
        variant = q0.upper() + "!" if j % 2 else "  " + q0.replace(" ", ", ") + "."
        mem.append({**mem[0], "item_id": f"copy{j:03d}", "caption": variant})
    for vid, cap in videos:
        for which, ts in (("first", 0.0), ("middle", 1.5)):
            mem.append(
                {
                    **mem[0],
                    "item_id": f"{vid}-{which}",
                    "image_uri": f"/videos/{vid}.mp4",
                    "caption": f"{cap} keyframe {which}",
                    "frame_ts": ts,
                    "video_id": vid,
                }
            )
    write_memory(ws, "mem", mem, parts=2)
    write_manifest(ws, "corp", videos, parts)
    return videos


def _check_rows(table: pa.Table, videos: list[tuple[str, str]], k: int) -> None:
    assert sorted(table.column("video_id").to_pylist()) == sorted(v for v, _ in videos)
    for row in table.to_pylist():
        got = row["retrieved"]
        assert row["n_retrieved"] == len(got) == k  # the memory has plenty of matches
        assert placeholders(row["prompt"]) == list(range(1, k + 1))
        assert row["prompt"].split("\n")[-1] == row["caption"]
        assert [g["score"] for g in got] == sorted((g["score"] for g in got), reverse=True)
        for g in got:
            assert normalise_caption(g["caption"]) != normalise_caption(row["caption"])
            assert not g["item_id"].startswith(row["video_id"])  # never its own keyframes
            assert g["box"] is None and g["mask_uri"] is None and g["uri"]


def test_prompts_exclusions_k_rerun(tmp_path):
    ws = Workspace.at(str(tmp_path))
    videos = _prompt_fixture(ws)
    cfg = VimiConfig(memory_shards=2, overfetch=2)
    res = build_prompts(ws, "corp", "mem", "ds", cfg)
    assert len(res.parts) == 3 and res.skipped == 0
    table = read_parts(ws.vimi_prompts("ds"), VIMI_PROMPTS)
    _check_rows(table, videos, 3)
    stats = {k: sum(s.get(k, 0) for s in res.stats) for k in ("excluded_caption", "refetched")}
    assert stats["excluded_caption"] >= 50 and stats["refetched"] >= 1  # the copies, all gone
    assert sum(s["excluded_video"] for s in res.stats) >= len(videos)
    again = build_prompts(ws, "corp", "mem", "ds", cfg)
    assert again.skipped == 3
    k2 = build_prompts(ws, "corp", "mem", "ds", cfg, k=2)
    assert k2.skipped == 0 and all(s["k"] == 2 for s in k2.stats)
    _check_rows(read_parts(ws.vimi_prompts("ds"), VIMI_PROMPTS), videos, 2)


def test_sigkill_mid_run_resumes_without_loss_or_duplicates(tmp_path):
    ws = Workspace.at(str(tmp_path))
    videos = _prompt_fixture(ws, n_videos=9, parts=3)
    script = textwrap.dedent(
        f"""
        from ragvid.pipelines.vimi.retrieve import build_prompts
        from ragvid.schemas.config import VimiConfig
        build_prompts({ws.root!r}, "corp", "mem", "ds", VimiConfig(memory_shards=2))
        """
    )
    env = dict(os.environ, RAGVID_FAULT=f"{FAULT}:2")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    out = ws.vimi_prompts("ds")
    assert os.path.exists(join(out, part_name(1)))  # the file was written, its marker not
    assert not os.path.exists(join(out, "_markers", "part-00001.json"))
    res = build_prompts(ws, "corp", "mem", "ds", VimiConfig(memory_shards=2))
    assert [s.get("skipped", False) for s in res.stats] == [True, False, False]
    table = read_parts(out, VIMI_PROMPTS)
    ids = table.column("video_id").to_pylist()
    assert len(ids) == len(set(ids)) == len(videos)
    _check_rows(table, videos, 3)


def test_ray_executor_matches_local(tmp_path, ray_local):
    ws = Workspace.at(str(tmp_path))
    videos = _prompt_fixture(ws, n_videos=8, parts=2)
    cfg = VimiConfig(memory_shards=2)
    res = build_prompts(ws, "corp", "mem", "ray", cfg, executor="ray")
    assert res.skipped == 0 and all(s["node"] for s in res.stats)
    local = build_prompts(ws, "corp", "mem", "local", cfg)
    a = read_parts(ws.vimi_prompts("ray"), VIMI_PROMPTS)
    b = read_parts(ws.vimi_prompts("local"), VIMI_PROMPTS)
    assert a.to_pylist() == b.to_pylist() and local.skipped == 0
    _check_rows(a, videos, 3)
