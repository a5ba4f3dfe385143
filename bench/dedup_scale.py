"""Near-duplicate groups at scale (issue 13): clustered dedup vs the one-process IVF range search.

Data: bench/index.py's CLIP-like 512-d vectors with 1% planted copies (cosine 0.97–0.995 to
their source, every third source with two), written as 100k-row embeddings parts. Each method
runs in a fresh child process, so wall time and peak RSS (VmHWM, see ``_peak_rss_gb``) are its
own:

* ``clustered`` — ``find_duplicates`` as it is now (above ``exact_max_n``: k-means clusters,
  multi-assignment, blocked products; streamed reads);
* ``old`` — ``find_duplicates`` from git ``HEAD`` (before issue 13): all columns but frames
  read at once, IVF range search, nprobe 16. Only at sizes given to ``--old-max-n``.
* ``grow`` (with ``--grow-new F``: the corpus is written in parts of F·N rows and the last
  part is "new") — ``find_duplicates`` (method ``ivf``) on the corpus without its last part,
  then again with it: the second run grows the first table (only the new rows searched, by an
  IVF range search). Its seconds are the second run's; the first's are ``before_s``. Compare
  with ``clustered``, a full recompute.

Scored in the parent: planted-group recall (every member of a planted group in one found
group) and pair recall vs exact range search — all pairs ≥ δ_dedup touching a random sample
of videos (exact ``IndexFlatIP`` range search of the sample against all N), counted as found
when both ends share a group.

    .venv/bin/python bench/dedup_scale.py --n 100000                      # ~2 min, 2 cores
    .venv/bin/python bench/dedup_scale.py --n 100000 1000000 --old-max-n 100000
    .venv/bin/python bench/dedup_scale.py --n 1000000 --old-max-n 0 --grow-new 0.1
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import faiss
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from index import clip_like, plant_duplicates, write_embeddings  # noqa: E402

from ragvid.pipelines.index.dedup import read_duplicates  # noqa: E402

DELTA = 0.965
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _old_module(work: str):
    """pipelines/index/dedup.py as committed at HEAD (the pre-issue-13 algorithm)."""
    src = subprocess.run(
        ["git", "show", "HEAD:pipelines/index/dedup.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = os.path.join(work, "old_dedup.py")
    with open(path, "w") as fh:
        fh.write(src)
    spec = importlib.util.spec_from_file_location("old_dedup", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["old_dedup"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _peak_rss_gb() -> float:
    """This process's peak RSS. ``getrusage``'s ru_maxrss survives fork + exec (a child starts
    at the parent's peak), so read the kernel's per-address-space high-water mark (VmHWM, new
    at exec) where there is one, and fall back to ru_maxrss."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB → GiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(method: str, emb: str, out: str, work: str) -> None:
    """One run in this process: print wall time, peak RSS and the report as JSON."""
    if method == "old":
        find = _old_module(work).find_duplicates
    else:
        from ragvid.pipelines.index.dedup import find_duplicates as find
    extra, kw = {}, {}
    if method == "grow":  # the table of the corpus before its last part, then grown
        from ragvid.schemas.config import DedupConfig

        kw = {"config": DedupConfig(method="ivf")}  # the clustered method recomputes
        t = time.perf_counter()
        find(emb + "-before", out, DELTA, **kw)
        extra["before_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    rep = find(emb, out, DELTA, **kw)
    wall = time.perf_counter() - t
    if method == "grow" and rep.grown_from is None:
        raise SystemExit("the second run did not grow the table")
    peak = _peak_rss_gb()
    print(
        json.dumps(
            {
                "seconds": round(wall, 1),
                "peak_rss_gb": round(peak, 2),
                "method": rep.method,
                "pairs": rep.n_pairs,
                "groups": rep.n_groups,
                **extra,
            }
        )
    )


def score(x, ids, groups, table: str, sample, truth_i, truth_j) -> dict:
    d = read_duplicates(table)
    row_of = {v: k for k, v in enumerate(ids)}
    gid = np.full(len(ids), -1, np.int64)
    for v, g in zip(d["video_id"], d["group_id"], strict=True):
        gid[row_of[v]] = g
    ok = (gid[truth_i] >= 0) & (gid[truth_i] == gid[truth_j])
    planted = sum(1 for g in groups if gid[g[0]] >= 0 and len({int(gid[m]) for m in g}) == 1)
    return {
        "planted_group_recall": round(planted / len(groups), 4),
        "pair_recall_vs_exact": round(float(ok.mean()) if len(ok) else 1.0, 4),
        "sample_pairs": int(len(ok)),
    }


def run_size(n: int, a, work: str) -> list[dict]:
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    x, groups = plant_duplicates(clip_like(n, rng), 0.01, rng)
    emb = f"{work}/emb-{n}"
    part_rows = int(n * a.grow_new) if a.grow_new else 100_000
    ids = write_embeddings(x, emb, part_rows)
    if a.grow_new:  # the corpus before its last part: the same files (names, sizes, mtimes)
        parts = sorted(os.listdir(emb))
        os.makedirs(emb + "-before", exist_ok=True)
        for name in parts[:-1]:
            os.link(f"{emb}/{name}", f"{emb}-before/{name}")
    x = x.astype(np.float16).astype(np.float32)  # what the parts hold
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    sample = np.sort(rng.choice(n, min(n, a.sample), replace=False))
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    ti, tj = [], []
    for s in range(0, len(sample), 1024):
        q = sample[s : s + 1024]
        lims, _, jj = flat.range_search(x[q], DELTA)
        ii = np.repeat(q, np.diff(lims.astype(np.int64)))
        keep = ii != jj
        ti.append(ii[keep])
        tj.append(jj[keep])
    del flat
    truth_i, truth_j = np.concatenate(ti), np.concatenate(tj)
    truth_s = time.perf_counter() - t
    rows = []
    methods = ["clustered"] + (["old"] if n <= a.old_max_n else [])
    methods += ["grow"] if a.grow_new else []
    for m in methods:
        out = f"{work}/dup-{m}-{n}.parquet"
        cmd = [sys.executable, __file__, "--child", m, emb, out, work]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, check=True)
        except subprocess.TimeoutExpired:
            rows.append({"n": n, "algo": m, "seconds": f">{a.timeout}", "note": "stopped"})
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        r.update(score(x, ids, groups, out, sample, truth_i, truth_j))
        rows.append({"n": n, "algo": m, **r})
        print(json.dumps(rows[-1]), file=sys.stderr)
    for r in rows:
        r.update(generate_s=round(gen_s, 1), exact_sample_s=round(truth_s, 1), load=os.getloadavg())
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[100_000])
    p.add_argument("--old-max-n", type=int, default=100_000, help="run the old one up to this N")
    p.add_argument("--sample", type=int, default=10_000, help="videos scored against exact")
    p.add_argument("--timeout", type=int, default=1200, help="seconds per method run")
    p.add_argument(
        "--grow-new", type=float, default=0.0, help="also grow a table by the last F·N rows"
    )
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--child", nargs=4, metavar=("METHOD", "EMB", "OUT", "WORK"), default=None)
    a = p.parse_args(argv)
    if a.child:
        child(*a.child)
        return []
    work = a.workdir or tempfile.mkdtemp(prefix="dedup_scale_")
    rows = [r for n in a.n for r in run_size(n, a, work)]
    print(json.dumps(rows, indent=1))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
