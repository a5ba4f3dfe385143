"""The fault campaign (issue 12): every stage of the chain is SIGKILLed — at named points
(``RAGVID_FAULT``, :mod:`ragvid.schemas.faults`: e.g. exactly between a part's embeddings and
failures writes) and at seeded random moments — in real ``ragvid`` processes, then rerun.
After every completed step ``embedded + quarantined = manifest rows``, and the final tables are
identical to those of an uninterrupted run of the same chain: the same rows, ids, failures and
neighbour lists exactly; vectors and scores to float16 rounding — a part recomputed whole after
a kill encodes its videos in one batch instead of two, and CPU matmul kernels round differently
for different batch shapes (CI saw ~1e-4 differences, once in many runs).

Training is killed at five named points and at random times, each followed by a resume that
must match an uninterrupted run bit for bit, in ``test_train_faults.py``; more index-build kill
points are in ``test_index_versions.py``.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from ragvid.schemas import SynthConfig, Workspace

SLUG = "preset-tiny"
EMBED = ["embed", "-c", "c", "-e", "tiny", "--part-size", "3", "--engine", "local"]
EMBED += ["--max-failure-ratio", "0.5"]  # 4 of 18 quarantined while two videos are away
INDEX = ["index", "build", "--corpus", "c", "--encoder", "tiny", "--no-ray"]
DEDUP = ["index", "dedup", "--corpus", "c", "--encoder", "tiny"]
NEIGH = ["neighbours", "--index", "c", "-k", "3", "--part-size", "5"]
VOLATILE = {"seconds", "wall_s", "created", "finished_at", "timings", "decode_s", "encode_s"}


def _env(fault: str | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("RAGVID_FAULT", None)
    if fault:
        env["RAGVID_FAULT"] = fault
    return env


def _ragvid(ws: Workspace, *args: str, fault: str | None = None, kill_after: float | None = None):
    """Run ``ragvid`` in its own process (group); returns (returncode, output)."""
    cmd = [sys.executable, "-m", "ragvid.flows.cli", *args, "-w", ws.root]
    proc = subprocess.Popen(
        cmd,
        env=_env(fault),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def _ok(ws: Workspace, *args: str) -> str:
    code, out = _ragvid(ws, *args)
    assert code == 0, f"ragvid {' '.join(args)} → {code}\n{out[-3000:]}"
    return out


def _killed(ws: Workspace, *args: str, fault: str) -> None:
    code, out = _ragvid(ws, *args, fault=fault)
    assert code == -signal.SIGKILL, f"{fault}: the kill point was never reached\n{out[-2000:]}"


def _rows(path: str, columns: list[str] | None = None) -> list[dict]:
    files = sorted(Path(path).glob("part-*.parquet")) if Path(path).is_dir() else [Path(path)]
    t = pa.concat_tables([pq.read_table(f, columns=columns) for f in files])
    return t.drop_columns([c for c in t.column_names if c in VOLATILE]).to_pylist()


def _tables(ws: Workspace) -> dict[str, list[dict]]:
    lay = ws.index_layout("c")
    return {
        "embeddings": _rows(ws.embeddings("c", SLUG)),
        "failures": _rows(ws.failures("c", SLUG), ["video_id", "error_class", "attempt"]),
        "index_ids": _rows(lay.ids),
        "neighbours": _rows(ws.neighbours("c")),
    }


FLOAT_TOL = 2e-3  # float16 holds ~3 significant digits; batch-shape rounding moves the last one


def _split_floats(rows: list[dict]) -> tuple[list[dict], list[np.ndarray]]:
    """(the rows without their float columns, each float column as one flat array)."""
    floats = [k for k, v in (rows[0].items() if rows else []) if _is_float(v)]
    exact = [{k: v for k, v in r.items() if k not in floats} for r in rows]
    arrays = [
        np.concatenate([np.ravel(np.asarray(r[k], np.float64)) for r in rows]) for k in floats
    ]
    return exact, arrays


def _is_float(v) -> bool:
    while isinstance(v, list) and v:
        v = v[0]
    return isinstance(v, float)


def _assert_same(name: str, a: list[dict], b: list[dict]) -> None:
    (ea, fa), (eb, fb) = _split_floats(a), _split_floats(b)
    assert ea == eb, f"{name} differs after the kills"
    for x, y in zip(fa, fb, strict=True):
        worst = float(np.max(np.abs(x - y), initial=0.0))
        assert worst <= FLOAT_TOL, f"{name}: a vector moved by {worst:.2e} after the kills"


def _balanced(ws: Workspace) -> tuple[int, int]:
    """embedded + quarantined = manifest rows, over the parts whose markers are valid — and
    every valid marker's counts match the files it vouches for."""
    from ragvid.schemas.markers import Marker, TableState

    state = TableState(ws.embeddings("c", SLUG))
    emb = fail = 0
    for p in state.parts():
        m = state.check(p)
        if not isinstance(m, Marker):
            continue
        e = pq.read_metadata(m.uri("main")).num_rows
        f = pq.read_metadata(m.uri("failures")).num_rows
        assert (e, f) == (m.stats["embedded"], m.stats["quarantined"]), p
        assert e + f == m.stats["rows"], p
        emb, fail = emb + e, fail + f
    return emb, fail


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from ragvid.pipelines.corpus.synth import synth_corpus

    root = tmp_path_factory.mktemp("campaign")
    cfg = SynthConfig(
        num_videos=14, num_duplicates=2, num_bad=2, width=48, height=32, num_frames=8, seed=11
    )
    return synth_corpus(str(root / "raw"), cfg).out_dir


def _ingest(ws: Workspace, raw: str) -> None:
    from ragvid.flows.cli import app

    res = CliRunner().invoke(app, ["corpus", "ingest", raw, "--name", "c", "-w", ws.root])
    assert res.exit_code == 0, res.output


def _good_videos(ws: Workspace) -> list[Path]:
    from ragvid.schemas import MANIFEST, read_parts

    uris = read_parts(ws.manifest("c"), MANIFEST).column("uri").to_pylist()
    return [Path(u) for u in uris if Path(u).is_file() and Path(u).stat().st_size > 1000]


def _hide(videos: list[Path]) -> None:
    for v in videos:
        v.rename(v.with_suffix(v.suffix + ".away"))


def _restore(videos: list[Path]) -> None:
    for v in videos:
        v.with_suffix(v.suffix + ".away").rename(v)


def _chain(ws: Workspace, kills: bool, seed: int = 0) -> None:
    rng = random.Random(seed)
    from ragvid.pipelines.corpus.parts import manifest_rows

    videos = _good_videos(ws)[:2]  # two good videos, missing during the first embed
    total = manifest_rows(ws.manifest("c"))
    _hide(videos)
    try:
        if kills:
            _killed(ws, *EMBED, fault="embed:between-part-files:2")
            _killed(ws, *EMBED, fault="atomic-put:before-rename:3")
            _ragvid(ws, *EMBED, kill_after=rng.uniform(1.0, 4.0))  # a kill at a random moment
            assert sum(_balanced(ws)) <= total
        _ok(ws, *EMBED)
    finally:
        _restore(videos)
    emb, fail = _balanced(ws)
    assert emb + fail == total and fail >= len(videos)
    retry = [*EMBED, "--retry-failures"]
    if kills:  # the window between the failures and the embeddings rewrite of a retried part
        _killed(ws, *retry, fault="embed:between-part-files:1")
        assert sum(_balanced(ws)) <= total
        _killed(ws, *retry, fault="atomic-put:before-rename:2")
    _ok(ws, *retry)
    emb2, fail2 = _balanced(ws)
    assert (emb2, fail2) == (emb + len(videos), fail - len(videos))
    _ok(ws, *DEDUP)
    if kills:  # more index-build kill points: test_index_versions.py
        _killed(ws, *INDEX, fault="index-build:before-switch:1")
    _ok(ws, *INDEX)
    if kills:
        _killed(ws, *NEIGH, fault="neighbours:before-marker:2")
    _ok(ws, *NEIGH)
    assert sum(_balanced(ws)) == total


def test_killed_chain_ends_identical_to_an_uninterrupted_one(corpus, tmp_path):
    started = time.monotonic()
    raw = tmp_path / "raw"
    shutil.copytree(corpus, raw)  # the chains hide and restore videos in it, one after the other
    clean, killed = Workspace.at(tmp_path / "clean"), Workspace.at(tmp_path / "killed")
    _ingest(clean, str(raw))
    shutil.copytree(clean.root, killed.root)
    _chain(clean, kills=False)
    _chain(killed, kills=True, seed=12)
    a, b = _tables(clean), _tables(killed)
    for name in a:
        _assert_same(name, a[name], b[name])
    leftovers = [p for p in Path(killed.root).rglob("*.tmp") if p.is_file()]
    assert not leftovers, leftovers
    assert time.monotonic() - started < 600
