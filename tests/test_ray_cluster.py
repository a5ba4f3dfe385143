"""Index build, dedup and neighbour lists on a real multi-node Ray cluster (a head and a worker node
started on this machine, the workspace on a path both see): tasks land on both nodes and the
results equal the single-process run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from ragvid.pipelines.index.build import build_index
from ragvid.pipelines.index.dedup import find_duplicates, read_duplicates
from ragvid.pipelines.index.neighbours import materialize_neighbours
from ragvid.pipelines.index.search import Retriever
from ragvid.schemas import NEIGHBOURS, IndexConfig, RetrievalConfig, read_parts
from ragvid.schemas.config import DedupConfig
from ragvid.schemas.markers import TableState

CLUSTER = """
import json, sys
import ray
from ray.cluster_utils import Cluster
from ragvid.pipelines.index.build import build_index
from ragvid.pipelines.index.dedup import find_duplicates
from ragvid.pipelines.index.neighbours import materialize_neighbours
from ragvid.schemas import IndexConfig, RetrievalConfig
from ragvid.schemas.config import DedupConfig
from ragvid.schemas.markers import TableState

emb, out, nb, dup = sys.argv[1:5]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
cluster.add_node(num_cpus=1)
ray.init(address=cluster.address, log_to_driver=False)
cluster.wait_for_nodes()
man = build_index(emb, out, IndexConfig(num_shards=4), ray=True)
dedup = find_duplicates(emb, dup, config=DedupConfig(**json.loads(sys.argv[5])))
rep = materialize_neighbours(out, nb, RetrievalConfig(k=4), part_size=60, ray=True)
state = TableState(nb)
nodes = {
    "shards": [s["node"] for s in man.shards],
    "parts": [state.check(p).stats["node"] for p in state.parts()],
    "dedup": dedup.nodes,
    "cluster": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"]),
}
print("RESULT " + json.dumps(nodes))
ray.shutdown()
cluster.shutdown()
"""


def _lists(folder: str):
    t = read_parts(folder, NEIGHBOURS)
    return t.select(["video_id", "neighbour_ids", "mask"]).to_pylist()


# small clusters and buckets: many bucket tasks, so both nodes take some
DEDUP = DedupConfig(method="clustered", cluster_size=32, max_cluster_size=96, spill_bucket_rows=64)


def test_build_dedup_and_neighbours_spread_over_two_nodes(
    clustered_embeddings, tmp_path, monkeypatch
):
    folder, table, _ = clustered_embeddings
    out, nb = tmp_path / "cluster-index", tmp_path / "cluster-nb"
    dup = tmp_path / "cluster-dup" / "duplicates.parquet"
    args = [folder, str(out), str(nb), str(dup), DEDUP.model_dump_json()]
    proc = subprocess.run(
        [sys.executable, "-c", CLUSTER, *args],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    nodes = json.loads(line.removeprefix("RESULT "))
    assert len(nodes["cluster"]) == 2
    used = set(nodes["shards"]) | set(nodes["parts"])
    assert used <= set(nodes["cluster"]) and len(used) == 2, nodes  # both nodes worked
    assert set(nodes["dedup"]) == set(nodes["cluster"]), nodes  # bucket tasks on both

    # dedup in this process (no Ray tasks, even where the session's Ray is up): the same groups
    with monkeypatch.context() as m:
        m.delitem(sys.modules, "ray", raising=False)  # what map_tasks looks at
        local_dup = find_duplicates(folder, str(tmp_path / "local-dup.parquet"), config=DEDUP)
    assert read_duplicates(str(dup)) == read_duplicates(local_dup.table_path)
    assert local_dup.nodes == [] and local_dup.n_groups > 5

    # the same inputs in this process, without Ray tasks: identical index and lists
    local = build_index(folder, str(tmp_path / "local-index"), IndexConfig(num_shards=4), ray=False)
    r_c, r_l = Retriever.open(str(out)), Retriever.open(local.path)
    q = np.asarray(r_l.vectors[::17])
    cfg = RetrievalConfig(k=6)
    a, b = (
        r_c.search(q, modality="vector", config=cfg),
        r_l.search(q, modality="vector", config=cfg),
    )
    assert a.ids.tolist() == b.ids.tolist()
    np.testing.assert_array_equal(a.scores, b.scores)
    local_nb = str(tmp_path / "local-nb")
    materialize_neighbours(local.path, local_nb, RetrievalConfig(k=4), part_size=60)
    assert _lists(str(nb)) == _lists(local_nb)
    assert len(TableState(str(nb)).parts()) == -(-len(table) // 60)
