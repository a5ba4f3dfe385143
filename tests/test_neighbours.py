"""Training neighbour lists: q ∉ Z (by id and by duplicate group), δ_min, mutual dedup,
padding, resume and parameter checks — on clustered vectors with planted duplicates."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ragvid.pipelines.index.neighbours import materialize_neighbours
from ragvid.pipelines.index.search import Retriever
from ragvid.schemas import NEIGHBOURS, RetrievalConfig, list_parts, read_parts
from ragvid.schemas.markers import IncompleteTableError, marker_uri


def _lists(out: str):
    t = read_parts(out, NEIGHBOURS)
    k = len(t.column("mask")[0])
    ids = np.array(t.column("neighbour_ids").to_pylist(), dtype=object).reshape(-1, k)
    sc = np.array(t.column("scores").to_pylist(), np.float32)
    mk = np.array(t.column("mask").to_pylist(), bool)
    return t.column("video_id").to_pylist(), ids, sc, mk


@pytest.mark.parametrize("k,delta_min", [(5, 0.6), (20, 0.88)])
def test_neighbour_invariants(built_index, tmp_path, k, delta_min):
    index, table, truth = built_index
    cfg = RetrievalConfig(k=k, delta_min_video=delta_min)
    rep = materialize_neighbours(index, str(tmp_path / "nb"), cfg, part_size=150, batch_size=64)
    assert rep.n_videos == len(table) and rep.n_parts == 3 and rep.parts_written == 3
    vids, ids, sc, mk = _lists(str(tmp_path / "nb"))
    assert vids == table.column("video_id").to_pylist()
    r = Retriever.open(index)
    group_of = {v: i for i, g in enumerate(truth["groups"]) for v in g}
    for q, row, s, m in zip(vids, ids, sc, mk, strict=True):
        kept = [v for v in row[m]]
        assert q not in kept
        if q in group_of:
            assert not set(kept) & set(truth["groups"][group_of[q]])
        assert (s[m] >= delta_min).all() and (s[~m] == 0).all()
        assert all(v is None for v in row[~m])
        assert (np.diff(m.astype(int)) <= 0).all()
        v = r.vectors[r.rows_for(kept)]
        g = v @ v.T
        np.fill_diagonal(g, -1)
        assert (g < cfg.delta_dedup).all()
        qv = r.vectors[r.ids.row(q)]
        assert (v @ qv < cfg.delta_dedup).all()
    if k == 20:
        assert (~mk).any() and mk.any()  # the high δ_min pads some slots
    else:
        assert mk.all()


def test_duplicates_excluded_even_without_table(built_index, tmp_path, clustered_embeddings):
    # an index without a duplicates table still excludes copies by cosine with the query
    from ragvid.pipelines.index.build import build_index
    from ragvid.schemas import IndexConfig

    folder, _, truth = clustered_embeddings
    build_index(folder, str(tmp_path / "ix"), IndexConfig(), ray=False)
    materialize_neighbours(
        str(tmp_path / "ix"),
        str(tmp_path / "nb"),
        RetrievalConfig(k=5),
        video_ids=[g[0] for g in truth["groups"]],
    )
    vids, ids, _, _ = _lists(str(tmp_path / "nb"))
    for q, row in zip(vids, ids, strict=True):
        group = next(g for g in truth["groups"] if g[0] == q)
        assert not set(row.tolist()) & set(group)


def test_resume_skips_done_parts_and_refuses_other_params(built_index, tmp_path):
    index, _, _ = built_index
    out = str(tmp_path / "nb")
    cfg = RetrievalConfig(k=5)
    materialize_neighbours(index, out, cfg, part_size=100)
    parts = list_parts(out)
    assert len(parts) == 5
    mtimes = [os.path.getmtime(p) for p in parts]
    again = materialize_neighbours(index, out, cfg, part_size=100)
    assert again.parts_skipped == 5 and again.parts_written == 0
    assert [os.path.getmtime(p) for p in parts] == mtimes
    before = _lists(out)
    # a crashed run: part 2 written but never marked done — not part of the table any more
    os.remove(marker_uri(parts[2]))
    with pytest.raises(IncompleteTableError, match="4 of 5 parts done"):
        _lists(out)
    third = materialize_neighbours(index, out, cfg, part_size=100)
    assert third.parts_written == 1 and third.parts_skipped == 4
    after = _lists(out)
    assert before[0] == after[0] and (before[1] == after[1]).all()
    with pytest.raises(ValueError, match="other parameters"):
        materialize_neighbours(index, out, RetrievalConfig(k=7), part_size=100)


def test_unknown_training_video(built_index, tmp_path):
    with pytest.raises(KeyError, match="nope"):
        materialize_neighbours(
            built_index[0], str(tmp_path / "nb"), RetrievalConfig(), video_ids=["v00001", "nope"]
        )


def test_cli_neighbours(built_index, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from ragvid.flows.cli import app
    from ragvid.schemas import Workspace

    ws = Workspace.at(tmp_path / "ws")
    shutil.copytree(built_index[0], ws.index("demo"))
    res = CliRunner().invoke(
        app, ["neighbours", "--index", "demo", "-k", "3", "--part-size", "200", "-w", ws.root]
    )
    assert res.exit_code == 0, res.output
    assert "430 videos in 3 part(s)" in " ".join(res.output.split())
    assert len(list_parts(ws.neighbours("demo"), require_done=True)) == 3
    both = ["neighbours", "--index", "demo", "--ray", "--shard-actors", "-w", ws.root]
    res = CliRunner().invoke(app, both)
    assert res.exit_code != 0 and "pick one" in " ".join(res.output.split())


def test_lists_with_shards_in_ray_actors_equal_the_in_process_lists(
    built_index, tmp_path, ray_local
):
    """shard_actors: each shard in a Ray actor (no process holds every shard's codes), the
    parts computed here — the same lists, and the actors are given back afterwards."""
    index_dir = built_index[0]
    cfg = RetrievalConfig(k=4)
    here = materialize_neighbours(index_dir, str(tmp_path / "a"), cfg, part_size=100)
    actors = materialize_neighbours(
        index_dir, str(tmp_path / "b"), cfg, part_size=100, shard_actors=True
    )
    cols = ["video_id", "neighbour_ids", "scores", "mask"]
    a = read_parts(str(tmp_path / "a"), NEIGHBOURS).select(cols).to_pylist()
    b = read_parts(str(tmp_path / "b"), NEIGHBOURS).select(cols).to_pylist()
    assert a == b and here.n_videos == actors.n_videos > 100
    import time

    total = ray_local.cluster_resources()["CPU"]
    for _ in range(50):  # the actors' CPUs come back once they are killed
        if ray_local.available_resources().get("CPU", 0) >= total:
            break
        time.sleep(0.2)
    assert ray_local.available_resources().get("CPU", 0) >= total
