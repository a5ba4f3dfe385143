"""Index versions and integrity (issue 12): a build writes a new version and switches to it
atomically; a killed rebuild leaves the previous one serving; every file a reader trusts is
checksummed, a damaged one is refused by readers and rebuilt by the next build; fewer shards
leave none stale; a moved workspace still opens the index and its duplicates.

Real FAISS indexes on real files; kills are real processes SIGKILLing themselves at named
fault points (``RAGVID_FAULT``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import INDEX_TEST_ENCODER, make_clustered_embeddings

from ragvid.pipelines.index import versions
from ragvid.pipelines.index.build import build_index
from ragvid.pipelines.index.dedup import find_duplicates, read_duplicates, read_index_duplicates
from ragvid.pipelines.index.layout import CorruptShardError, IndexManifest, list_indexes
from ragvid.pipelines.index.search import Retriever
from ragvid.pipelines.index.vectors import table_vectors
from ragvid.schemas import EMBEDDINGS, IndexConfig, RetrievalConfig, Workspace, slug, write_table
from ragvid.schemas.checksum import ChecksumMismatchError
from ragvid.schemas.workspace import IndexLayout

FOUR, TWO = IndexConfig(num_shards=4), IndexConfig(num_shards=2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(embeddings folder, normalised vectors, table): 129 clustered videos in two parts."""
    table, _ = make_clustered_embeddings(n_distinct=120, n_dup_groups=6, n_clusters=8, seed=1)
    folder = tmp_path_factory.mktemp("versions-emb") / "embeddings"
    half = len(table) // 2
    for i, part in enumerate((table.slice(0, half), table.slice(half))):
        write_table(folder / f"part-{i:05d}.parquet", part, EMBEDDINGS, encoder=INDEX_TEST_ENCODER)
    x = table_vectors(table)
    return str(folder), x / np.linalg.norm(x, axis=1, keepdims=True), table


@pytest.fixture
def index(corpus, tmp_path):
    """A workspace index 'c' with its duplicates table, built once with 4 shards."""
    ws = Workspace.at(tmp_path / "ws")
    emb = ws.embeddings("c", slug(INDEX_TEST_ENCODER))
    shutil.copytree(corpus[0], emb)
    layout = ws.index_layout("c")
    find_duplicates(emb, layout.duplicates)
    build_index(emb, layout.root, FOUR, ray=False)
    return ws, emb, layout


def _results(index_dir: str, x: np.ndarray):
    """What readers get: video→video and BM25 results (ids and scores)."""
    r = Retriever.open(index_dir)
    res = r.search(x[::5], modality="vector", config=RetrievalConfig(k=5))
    bm = r.search_text(
        ["a red circle", "blue star moving up"], None, RetrievalConfig(k=4), mode="bm25"
    )
    return res.ids.tolist(), np.round(res.scores, 6).tolist(), bm.ids.tolist()


def _versions(layout: IndexLayout) -> list[str]:
    return versions.list_versions(layout)


def _flip_bit(path: str | Path) -> None:
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2] ^= 0x10
    Path(path).write_bytes(bytes(data))


# --- the version mechanism ---------------------------------------------------------------


def test_build_writes_versions_and_keeps_the_previous_one(index, corpus):
    ws, emb, layout = index
    root = Path(layout.root)
    man = IndexManifest.load(layout.root)
    assert man.version == "v-000001" and man.previous is None and not man.reused
    assert not list(root.glob("shard-*.faiss")) and not (root / "ids.parquet").exists()
    assert sorted(p.name for p in Path(layout.current().folder).glob("shard-*")) == [
        f"shard-{i:03d}.faiss" for i in range(4)
    ]
    # the root index.json is the switch: the same JSON the version keeps as its own record
    assert json.loads((root / "index.json").read_text()) == json.loads(
        Path(layout.current().version_manifest).read_text()
    )
    # every file a reader trusts is recorded, with size and sha256
    names = set(man.files)
    assert {"ids.parquet", "duplicates.parquet", "bm25/ids.json"} <= names
    assert all(len(r["sha256"]) == 64 and r["size"] > 0 for r in man.files.values())
    pieces = man.vectors["pieces"]  # one piece of exact vectors per shard, each recorded
    assert [p["file"] for p in pieces] == [f"vectors-{i:03d}.npy" for i in range(4)]
    assert sum(p["rows"] for p in pieces) == man.ntotal
    assert all(p["size"] > 0 for p in pieces) and all(s["bytes"] > 0 for s in man.shards)

    again = build_index(emb, layout.root, FOUR, ray=False)  # up to date, verified
    assert again.reused and again.version == "v-000001"
    second = build_index(emb, layout.root, FOUR, ray=False, force=True)
    assert (second.version, second.previous) == ("v-000002", "v-000001")
    assert _versions(layout) == ["v-000001", "v-000002"]
    third = build_index(emb, layout.root, FOUR, ray=False, force=True)
    assert (third.version, third.previous) == ("v-000003", "v-000002")
    assert _versions(layout) == ["v-000002", "v-000003"]  # older than previous: collected
    assert [m.version for m in list_indexes(ws.root)] == ["v-000003"]


def test_fewer_shards_leave_no_stale_shards(index, corpus):
    ws, emb, layout = index
    before = _results(layout.root, corpus[1])
    man = build_index(emb, layout.root, TWO, ray=False)  # config changed: not up to date
    assert not man.reused and len(man.shards) == 2
    current = Path(layout.current().folder)
    assert sorted(p.name for p in current.glob("*.faiss")) == ["shard-000.faiss", "shard-001.faiss"]
    assert _results(layout.root, corpus[1]) == before  # Flat: same results, any sharding
    build_index(emb, layout.root, TWO, ray=False, force=True)
    every = sorted(str(p.relative_to(layout.root)) for p in Path(layout.root).rglob("*.faiss"))
    assert every == [f"versions/v-00000{v}/shard-00{i}.faiss" for v in (2, 3) for i in (0, 1)]


def test_an_open_retriever_keeps_its_version_through_one_switch(index, corpus):
    _, emb, layout = index
    r = Retriever.open(layout.root)
    build_index(emb, layout.root, TWO, ray=False)
    assert r.man.version == "v-000001" and r.bm25() is not None  # kept as the previous
    late = Retriever.open(layout.root)
    build_index(emb, layout.root, FOUR, ray=False)
    build_index(emb, layout.root, TWO, ray=False)
    with pytest.raises(FileNotFoundError, match="replaced by newer builds.*reopen the index"):
        late.bm25()


def test_a_failed_build_leaves_no_version_behind(index, corpus):
    _, emb, layout = index
    with pytest.raises(ValueError, match="factory string 'Bogus12'"):
        build_index(emb, layout.root, IndexConfig(factory="Bogus12"), ray=False)
    assert _versions(layout) == ["v-000001"]
    assert IndexManifest.load(layout.root).version == "v-000001"


# --- killed rebuilds ---------------------------------------------------------------------

BUILD = (
    "import sys\n"
    "from ragvid.pipelines.index.build import build_index\n"
    "from ragvid.schemas import IndexConfig\n"
    "build_index(sys.argv[1], sys.argv[2], IndexConfig(num_shards=2), ray=False, force=True)\n"
)


def _killed_build(emb: str, out: str, point: str) -> None:
    env = dict(os.environ, RAGVID_FAULT=f"{point}:1")
    proc = subprocess.run(
        [sys.executable, "-c", BUILD, emb, out], env=env, capture_output=True, timeout=240
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-3000:]


@pytest.mark.parametrize(
    "point", ["index-build:after-shards", "index-build:after-files", "index-build:before-switch"]
)
def test_killed_rebuild_leaves_the_previous_index_serving(index, corpus, point):
    _, emb, layout = index
    pointer = Path(layout.manifest).read_bytes()
    before = _results(layout.root, corpus[1])
    _killed_build(emb, layout.root, point)
    assert Path(layout.manifest).read_bytes() == pointer  # not switched
    assert _versions(layout) == ["v-000001", "v-000002"]  # the half-built one is still there
    assert _results(layout.root, corpus[1]) == before  # identical results from v-000001

    man = build_index(emb, layout.root, TWO, ray=False)  # the next build cleans up and succeeds
    assert (man.version, man.previous) == ("v-000003", "v-000001") and len(man.shards) == 2
    assert _versions(layout) == ["v-000001", "v-000003"]
    assert _results(layout.root, corpus[1]) == before
    assert not [p for p in Path(layout.root).rglob("*.tmp")]


def test_killed_after_the_switch_serves_the_new_version(index, corpus):
    _, emb, layout = index
    before = _results(layout.root, corpus[1])
    build_index(emb, layout.root, FOUR, ray=False, force=True)  # v-000002
    _killed_build(emb, layout.root, "index-build:after-switch")  # v-000003, not collected
    assert _versions(layout) == ["v-000001", "v-000002", "v-000003"]
    man = IndexManifest.load(layout.root)
    assert man.version == "v-000003" and len(man.shards) == 2
    assert _results(layout.root, corpus[1]) == before
    again = build_index(emb, layout.root, TWO, ray=False)  # complete and verified: reused
    assert again.reused and _versions(layout) == ["v-000002", "v-000003"]


# --- damaged files -----------------------------------------------------------------------


def _damage(man: IndexManifest, what: str) -> str:
    lay = man.layout
    path = {
        "shard": lay.shard(1),
        "ids": lay.ids,
        "vectors": lay.vector_piece(2),
        "bm25": lay.file("bm25/data.csc.index.npy"),
        "duplicates": man.duplicates,
    }[what]
    _flip_bit(path)
    return path


def _read_everything(index_dir: str) -> None:
    r = Retriever.open(index_dir)
    r.search_text(["a red circle"], None, RetrievalConfig(k=3), mode="bm25")
    read_index_duplicates(r.man)


@pytest.mark.parametrize("what", ["shard", "ids", "vectors", "bm25", "duplicates"])
def test_a_flipped_bit_is_refused_and_rebuilt(index, corpus, what):
    _, emb, layout = index
    before = _results(layout.root, corpus[1])
    man = IndexManifest.load(layout.root)
    path = _damage(man, what)
    with pytest.raises(ChecksumMismatchError) as err:
        _read_everything(layout.root)
    assert Path(path).name in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, CorruptShardError) and "ragvid index build" in str(err.value)
    with pytest.raises(CorruptShardError):
        versions.verify(man, deep=True)

    rebuilt = build_index(emb, layout.root, FOUR, ray=False)  # same inputs: still rebuilt
    assert not rebuilt.reused and rebuilt.version == "v-000002"
    assert rebuilt.previous is None  # a damaged version is not kept
    assert _versions(layout) == ["v-000002"]
    _read_everything(layout.root)
    assert _results(layout.root, corpus[1]) == before


def test_ids_bit_flip_never_reaches_the_results(index, corpus):
    """The reported bug: a flipped bit in ids.parquet gave a duplicated and a missing id."""
    _, _, layout = index
    _flip_bit(IndexManifest.load(layout.root).layout.ids)
    with pytest.raises(CorruptShardError, match=r"ids\.parquet.*rebuild it with `ragvid index"):
        Retriever.open(layout.root)


def test_cli_says_up_to_date_only_for_an_intact_index(index, corpus):
    from typer.testing import CliRunner

    from ragvid.flows.cli import app

    ws, _, layout = index
    args = ["index", "build", "--corpus", "c", "--encoder", INDEX_TEST_ENCODER, "--no-ray"]
    args += ["--shards", "4", "-w", ws.root]
    run = CliRunner().invoke
    res = run(app, args)  # the fixture's build, same inputs: verified and reused
    assert res.exit_code == 0 and "up to date: version v-000001" in res.output, res.output
    _flip_bit(IndexManifest.load(layout.root).layout.shard(0))
    res = run(app, ["search", "red circle", "--index", "c", "--mode", "bm25", "-w", ws.root])
    assert res.exit_code == 2 and "checksum mismatch" in res.output
    res = run(app, args)
    assert res.exit_code == 0 and "is up to date:" not in res.output, res.output
    out = " ".join(res.output.split())
    assert "version v-000002" in out and "rebuilt: the current version is damaged" in out
    res = run(app, ["search", "red circle", "--index", "c", "--mode", "bm25", "-w", ws.root])
    assert res.exit_code == 0, res.output


# --- relocation and older layouts --------------------------------------------------------


def _strings(obj) -> list[str]:
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return [obj] if isinstance(obj, str) else []


def test_moved_workspace_opens_the_index_and_its_duplicates(index, corpus, tmp_path):
    ws, _, layout = index
    before = _results(layout.root, corpus[1])
    data = json.loads(Path(layout.manifest).read_text())
    assert not [s for s in _strings(data) if s.startswith(str(tmp_path))]  # nothing absolute
    assert data["duplicates"] == "versions/v-000001/duplicates.parquet"

    moved = Workspace.at(tmp_path / "elsewhere" / "ws")
    shutil.move(ws.root, moved.root)
    man = IndexManifest.load(moved.index("c"))
    assert man.duplicates.startswith(moved.root) and man.source["uri"].startswith(moved.root)
    groups = read_index_duplicates(man)
    assert len(groups["video_id"]) >= 12 and groups == read_duplicates(
        moved.index_layout("c").duplicates
    )
    assert _results(moved.index("c"), corpus[1]) == before
    emb = moved.embeddings("c", slug(INDEX_TEST_ENCODER))
    find_duplicates(emb, moved.index_layout("c").duplicates)  # a rerun writes the same bytes
    assert build_index(emb, moved.index("c"), FOUR, ray=False).reused  # nothing to redo


def test_flat_layout_opens_and_the_next_build_migrates_it(index, corpus):
    """An index written before versions (files at the index root, no ``version``)."""
    _, emb, layout = index
    before = _results(layout.root, corpus[1])
    root, version = Path(layout.root), Path(layout.current().folder)
    for p in version.iterdir():
        if p.name not in ("index.json", "index_infos.json", "duplicates.parquet", "embeddings"):
            shutil.move(str(p), root / p.name)
    data = json.loads(Path(layout.manifest).read_text())
    for key in ("version", "previous", "files"):
        data.pop(key)
    data["duplicates"] = "duplicates.parquet"
    (root / "index.json").write_text(json.dumps(data))
    shutil.rmtree(root / "versions")

    assert IndexManifest.load(layout.root).version is None
    assert _results(layout.root, corpus[1]) == before  # opens as it did
    man = build_index(emb, layout.root, FOUR, ray=False)  # same inputs, yet migrated
    assert not man.reused and man.version == "v-000001" and man.previous is None
    left = sorted(p.name for p in root.iterdir())
    assert left == ["_lock", "duplicates.parquet", "duplicates_hist.png", "index.json", "versions"]
    assert _results(layout.root, corpus[1]) == before
