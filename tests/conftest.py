"""Shared, session-scoped fixtures: one Ray start and one Prefect server per test session.

Sections are owned by areas; add new shared fixtures by appending a section (never rewrite).
"""

from __future__ import annotations

import errno
import os
import subprocess

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

try:
    import torch  # noqa: E402

    HAS_GPU = torch.cuda.is_available()
except Exception:  # pragma: no cover
    HAS_GPU = False


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# --- engines (owner: lead) -------------------------------------------------------------


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray started once for the whole session (ray.init ≈ 5 s on 2 cores)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            ignore_reinit_error=True,
            configure_logging=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_harness():
    """A throwaway Prefect server + database for the session (flows run against it)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


# --- corpus (owner: corpus) ------------------------------------------------------------


@pytest.fixture(scope="session")
def demo_corpus_raw(tmp_path_factory):
    """A small generated WebVid-layout corpus (32 clips + 4 near-duplicates + 4 bad files).

    Returns the ``SynthReport`` (``.out_dir``, ``.csv_path``, ``.videos_dir``, ``.counts``).
    Treat it as read-only: other tests share it.
    """
    from ragvid.pipelines.corpus.synth import synth_corpus
    from ragvid.schemas import SynthConfig

    out = tmp_path_factory.mktemp("demo_corpus_raw")
    return synth_corpus(str(out), SynthConfig(num_videos=32, num_duplicates=4, num_bad=4, seed=0))


@pytest.fixture(scope="session")
def demo_manifest(demo_corpus_raw, tmp_path_factory):
    """``(workspace, corpus)`` after ingesting ``demo_corpus_raw`` with Beam (2 shards).

    A namedtuple: ``ws, corpus = demo_manifest`` or ``demo_manifest.workspace``. The manifest
    is at ``Workspace.at(ws).manifest(corpus)``: 39 rows (the "missing" row is rejected;
    zero-byte, truncated and not-a-video rows stay for the decoder to quarantine). Read-only.
    """
    from collections import namedtuple

    from ragvid.pipelines.corpus.beam import ingest
    from ragvid.schemas import ManifestConfig, Workspace

    ws = Workspace.at(str(tmp_path_factory.mktemp("demo_ws")))
    ingest(
        demo_corpus_raw.out_dir,
        ws.manifest("demo"),
        ws.rejects("demo"),
        ManifestConfig(num_shards=2),
        source="demo",
    )
    return namedtuple("DemoManifest", "workspace corpus")(ws.root, "demo")


# --- flows (owner: flows) --------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A REAL `prefect server start` on localhost (own PREFECT_HOME + SQLite), torn down after.

    Yields ``(api_url, env)``: ``env`` is os.environ with PREFECT_API_URL pointing at it, for
    subprocesses (flows run in other processes talk to it like to a shared server).
    """
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("PREFECT_")]:
        env.pop(key)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home}/prefect.db",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        # the UI is on (at ``api_url`` minus ``/api``): tests/test_prefect_ui_pictures.py loads
        # its pages in Chromium, so the UI must call this server's API, not the default :4200
        PREFECT_SERVER_UI_ENABLED="true",
        PREFECT_UI_API_URL=url,
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    prefect = Path(sys.executable).with_name("prefect")
    log = open(home / "server.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [
            str(prefect),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-scheduler",
            "--no-late-runs",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited: {(home / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                log_text = (home / "server.log").read_text()
                raise RuntimeError(f"prefect server did not start: {log_text}")
            time.sleep(0.5)
        client_env = dict(env, PREFECT_API_URL=url)
        client_env.pop("PREFECT_API_DATABASE_CONNECTION_URL")
        yield url, client_env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# --- jobs (owner: jobs — training, batch generation, evaluation) -------------------------


def _jobs_video(i: int, n: int = 8, size: int = 32):
    """A small coloured square, static for even i, moving right for odd i."""
    import numpy as np

    rng = np.random.default_rng(i)
    frames = np.empty((n, size, size, 3), np.uint8)
    bg = rng.integers(0, 60, size=3)
    colour = rng.integers(120, 255, size=3)
    for t in range(n):
        frames[t] = bg
        x = 4 + (3 * t if i % 2 else 0)
        frames[t, 10:20, x : x + 8] = colour
    return frames


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """The tiny diffusers T2V folder (model/presets.py), written once per session."""
    from ragvid.model.presets import save_tiny_base

    return str(save_tiny_base(tmp_path_factory.mktemp("jobs-base") / "base"))


@pytest.fixture(scope="session")
def tiny_tables(tmp_path_factory):
    """A workspace with 6 real mp4s, their manifest, embeddings (dim 16, 3 frames) and K=2
    neighbour lists (the last row padded) — written through the real table contracts."""
    from types import SimpleNamespace

    import numpy as np
    import pyarrow as pa

    from ragvid.model.video_io import export_to_mp4
    from ragvid.schemas import EMBEDDINGS, MANIFEST, NEIGHBOURS, Workspace, part_name, write_table

    root = tmp_path_factory.mktemp("jobs-ws")
    ws = Workspace.at(root)
    n, dim, t, encoder = 6, 16, 3, "test:random-16"
    rng = np.random.default_rng(0)
    ids = [f"v{i:03d}" for i in range(n)]
    captions = [f"a {'moving' if i % 2 else 'static'} square number {i}" for i in range(n)]
    uris = []
    for i, vid in enumerate(ids):
        uris.append(export_to_mp4(_jobs_video(i), root / "raw" / f"{vid}.mp4", fps=8))
    manifest = pa.table(
        {
            "video_id": ids,
            "uri": uris,
            "caption": captions,
            "duration_s": [1.0] * n,
            "source": ["test"] * n,
            "source_file": ["captions.csv"] * n,
            "source_row": list(range(n)),
        }
    )
    write_table(f"{ws.manifest('toy')}/{part_name(0)}", manifest, MANIFEST)
    frames = rng.normal(size=(n, t, dim)).astype(np.float32)
    frames /= np.linalg.norm(frames, axis=-1, keepdims=True)
    video = frames.mean(1)
    video /= np.linalg.norm(video, axis=-1, keepdims=True)
    emb = pa.table(
        {
            "video_id": ids,
            "caption": captions,
            "frame_emb": [f.astype(np.float16).tolist() for f in frames],
            "video_emb": [v.astype(np.float16).tolist() for v in video],
            "text_emb": [v.astype(np.float16).tolist() for v in video],
            "n_frames": [t] * n,
            "frame_ts": [[0.0, 0.4, 0.8]] * n,
            "encoder": [encoder] * n,
        }
    )
    emb_dir = ws.embeddings("toy", "test-random-16")
    write_table(f"{emb_dir}/{part_name(0)}", emb, EMBEDDINGS, dim=dim, encoder=encoder)
    neigh_ids = [[ids[(i + 1) % n], ids[(i + 2) % n]] for i in range(n)]
    neigh_ids[-1][1] = None
    neigh = pa.table(
        {
            "video_id": ids,
            "neighbour_ids": neigh_ids,
            "scores": [[0.9, 0.8]] * (n - 1) + [[0.9, 0.0]],
            "mask": [[True, True]] * (n - 1) + [[True, False]],
        }
    )
    write_table(f"{ws.neighbours('toy')}/{part_name(0)}", neigh, NEIGHBOURS)
    return SimpleNamespace(
        root=str(root),
        ws=ws,
        ids=ids,
        captions=captions,
        uris=uris,
        frames=frames,
        video_emb=video,
        dim=dim,
        manifest_dir=ws.manifest("toy"),
        embeddings_dir=emb_dir,
        neighbours_dir=ws.neighbours("toy"),
        video=_jobs_video,
    )


# --- index (owner: index) --------------------------------------------------------------

INDEX_TEST_ENCODER = "test:clustered-32"
_COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black"]
_SHAPES = ["circle", "square", "triangle", "star", "hexagon"]
_MOTIONS = ["left", "right", "up", "down"]


def write_embedding_parts(table, folder, bounds: list[int], first: int = 0) -> str:
    """Write ``table``'s rows ``bounds[k]:bounds[k+1]`` as embeddings parts numbered from
    ``first`` into ``folder`` (a corpus that grows gets parts after its old ones)."""
    from ragvid.schemas import EMBEDDINGS, write_table

    folder.mkdir(parents=True, exist_ok=True)
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        write_table(
            folder / f"part-{first + k:05d}.parquet",
            table.slice(a, b - a),
            EMBEDDINGS,
            encoder=INDEX_TEST_ENCODER,
        )
    return str(folder)


def make_clustered_embeddings(
    n_distinct: int = 400,
    n_dup_groups: int = 20,
    dim: int = 32,
    n_clusters: int = 24,
    frames: int = 3,
    seed: int = 0,
):
    """An EMBEDDINGS table of clustered unit vectors with planted near-duplicate groups.

    Distinct videos sit in clusters (within-cluster cosine ≈ 0.8, never ≥ 0.93); each planted
    group is a distinct video plus 1–2 copies at cosine ≥ 0.99. Captions name the cluster's
    colour, shape and motion (so BM25 and a keyword text encoder agree with the clusters).
    Returns (table, truth) with truth = {"groups": [[ids…]…], "cluster": {id: c},
    "centres": (n_clusters, dim)}.
    """
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    cl = rng.integers(0, n_clusters, n_distinct)
    x = centres[cl] + rng.standard_normal((n_distinct, dim)) * 0.09
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"v{i:05d}" for i in range(n_distinct)]
    cluster = dict(zip(ids, cl.tolist(), strict=True))
    sims = x @ x.T
    np.fill_diagonal(sims, -1)
    assert sims.max() < 0.94, "generated distinct videos too close; change the seed"
    groups, vecs, all_ids, all_cl = [], [x], list(ids), list(cl)
    srcs = rng.choice(n_distinct, n_dup_groups, replace=False)
    for g, s in enumerate(srcs):
        members = [ids[s]]
        for c in range(1 + g % 2):
            y = x[s] + rng.standard_normal(dim) * 0.012
            vecs.append((y / np.linalg.norm(y))[None])
            vid = f"d{g:03d}-{c}"
            all_ids.append(vid)
            all_cl.append(cl[s])
            cluster[vid] = int(cl[s])
            members.append(vid)
        groups.append(members)
    x = np.concatenate(vecs).astype(np.float32)
    n = len(all_ids)
    captions = [
        f"a {_COLOURS[c % 8]} {_SHAPES[(c // 8) % 5]} moving {_MOTIONS[c % 4]} clip {i}"
        for i, c in enumerate(all_cl)
    ]
    fr = x[:, None, :] + rng.standard_normal((n, frames, dim)).astype(np.float32) * 0.02
    fr /= np.linalg.norm(fr, axis=2, keepdims=True)

    def fixed(a):
        return pa.FixedSizeListArray.from_arrays(pa.array(a.ravel(), pa.float16()), dim)

    frame_col = pa.ListArray.from_arrays(
        pa.array(np.arange(0, n * frames + 1, frames, dtype=np.int32)), fixed(fr)
    )
    table = pa.table(
        {
            "video_id": all_ids,
            "caption": captions,
            "frame_emb": frame_col,
            "video_emb": fixed(x),
            "text_emb": fixed(x),
            "n_frames": pa.array([frames] * n, pa.int32()),
            "frame_ts": pa.ListArray.from_arrays(
                pa.array(np.arange(0, n * frames + 1, frames, dtype=np.int32)),
                pa.array(np.tile(np.arange(frames, dtype=np.float32), n)),
            ),
            "encoder": [INDEX_TEST_ENCODER] * n,
        }
    )
    return table, {"groups": groups, "cluster": cluster, "centres": centres}


@pytest.fixture(scope="session")
def clustered_embeddings(tmp_path_factory):
    """(embeddings folder with two parts, table, truth) — generated clustered vectors."""
    table, truth = make_clustered_embeddings()
    folder = tmp_path_factory.mktemp("emb") / "embeddings"
    write_embedding_parts(table, folder, [0, len(table) // 2, len(table)])
    return str(folder), table, truth


# --- RAGME model (owner: issue 6, model/) ------------------------------------------------


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory):
    """The `tiny` preset written once as a real diffusers T2V folder (from_pretrained-able)."""
    from ragvid.model.presets import save_tiny_base

    return save_tiny_base(tmp_path_factory.mktemp("ragme") / "tiny-base")


@pytest.fixture
def torch_one_thread():
    """Tiny torch models on this shared 2-core box run ~30× faster on one intra-op thread
    (OpenMP threads spin-wait when the other core is busy); restored after the test."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class KeywordTextEncoder:
    """A text encoder for the clustered test vectors: a caption naming a cluster's colour and
    shape maps near that cluster's centre (the role CLIP's text tower plays), with the
    modality gap of real CLIP (text–video cosine ≈ 0.3–0.5, not ≈ 1)."""

    def __init__(self, centres, encoder_id: str = INDEX_TEST_ENCODER, gap: float = 0.4):
        import numpy as np

        self.centres = np.asarray(centres, np.float32)
        self.id, self.dim, self.gap = encoder_id, self.centres.shape[1], gap
        self._span = np.linalg.qr(self.centres.T)[0]  # orthonormal basis of the centres

    def encode_text(self, texts):
        import numpy as np

        out = []
        for t in texts:
            words = set(t.lower().split())
            hits = [
                c
                for c in range(len(self.centres))
                if _COLOURS[c % 8] in words and _SHAPES[(c // 8) % 5] in words
            ]
            rng = np.random.default_rng(sum(map(ord, t)))
            off = rng.standard_normal(self.dim).astype(np.float32)
            off -= self._span @ (self._span.T @ off)  # unrelated text: away from every cluster
            off /= np.linalg.norm(off)
            base = self.centres[hits].mean(0) if hits else off
            v = self.gap * base / np.linalg.norm(base) + (1 - self.gap) * off
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


@pytest.fixture(scope="session")
def keyword_encoder(clustered_embeddings):
    return KeywordTextEncoder(clustered_embeddings[2]["centres"])


@pytest.fixture(scope="session")
def built_index(clustered_embeddings, tmp_path_factory):
    """(index_dir, table, truth): a 3-shard Flat index over the clustered vectors, with the
    duplicates table written by `find_duplicates` next to it (threads, no Ray)."""
    from ragvid.pipelines.index.build import build_index
    from ragvid.pipelines.index.dedup import find_duplicates
    from ragvid.schemas import IndexConfig

    folder, table, truth = clustered_embeddings
    out = str(tmp_path_factory.mktemp("index") / "demo")
    find_duplicates(folder, out + "/duplicates.parquet")
    build_index(folder, out, IndexConfig(num_shards=3), ray=False)
    return out, table, truth


def _jobs_text_encoder(dim: int):
    """Deterministic prompt → vector (stands in for CLIP text in the in-memory index)."""
    import hashlib

    import numpy as np

    def encode(texts: list[str]) -> np.ndarray:
        rows = []
        for t in texts:
            seed = int(hashlib.sha1(t.encode()).hexdigest()[:8], 16)
            rows.append(np.random.default_rng(seed).normal(size=dim))
        return np.asarray(rows, np.float32)

    return encode


@pytest.fixture(scope="session")
def jobs_retrieval(tiny_tables):
    """Factory: an InMemoryRetrieval over tiny_tables (optionally with other frame embeddings)."""
    from ragvid.model.retrieval_source import InMemoryRetrieval

    def make(frame_emb=None):
        return InMemoryRetrieval(
            tiny_tables.ids,
            tiny_tables.video_emb,
            tiny_tables.frames if frame_emb is None else frame_emb,
            _jobs_text_encoder(tiny_tables.dim),
            videos=tiny_tables.uris,
        )

    return make


@pytest.fixture(scope="session")
def jobs_pipe(tiny_base):
    """RagmePipeline on the tiny base with a fresh (seeded) adapter for 16-d frame embeddings."""
    import torch

    from ragvid.model.adapter import RagmeAdapter
    from ragvid.model.pipeline_ragme import RagmePipeline
    from ragvid.model.presets import get_preset

    pipe = RagmePipeline.from_pretrained(tiny_base, adapter=None)
    p = get_preset("tiny")
    torch.manual_seed(0)
    pipe.set_adapter(
        RagmeAdapter.create(pipe.unet, input_dim=16, enhancer=p.enhancer, ragca=p.ragca)
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- embedding (owner: embedding) -------------------------------------------------------


def synth_manifest(report, ws, corpus: str) -> None:
    """Ingest a synth corpus with the real Beam stage, keeping rows whose file is missing
    (``check_files=False``) so the embedding stage meets every planted bad file."""
    from ragvid.pipelines.corpus.beam import ingest
    from ragvid.schemas import ManifestConfig

    ingest(
        report.out_dir,
        ws.manifest(corpus),
        ws.rejects(corpus),
        ManifestConfig(num_shards=1, check_files=False),
        source="synth",
    )


@pytest.fixture(scope="session")
def demo_embeddings(tmp_path_factory):
    """The embedded demo corpus: ``SynthConfig()`` (480 clips, 48 planted near-duplicates, 8 bad
    files), the tiny CLIP fitted on it (``fit_encoder`` defaults, ~100 held-out videos) and
    every part embedded in-process with it (~85 s on the 2-core box, once per session).

    Returns a namespace: ``ws`` (Workspace), ``root``, ``corpus`` ("demo"), ``encoder`` (the
    fitted encoder's id ``encoder:demo-tiny``, for EmbedConfig / the CLI with the workspace),
    ``embeddings_dir``, ``failures_dir``, ``raw`` (SynthReport), ``holdout`` (held-out video
    ids). Read-only: tests share it.
    """
    from types import SimpleNamespace

    from ragvid.pipelines.corpus.synth import synth_corpus
    from ragvid.pipelines.embed.encoder import load_encoder
    from ragvid.pipelines.embed.fit import fit_encoder, read_holdout
    from ragvid.pipelines.embed.spec import parse_encoder
    from ragvid.pipelines.embed.stage import embed_part, embeddings_dir, failures_dir, plan_parts
    from ragvid.schemas import EmbedConfig, SynthConfig, Workspace

    root = tmp_path_factory.mktemp("demo_embeddings")
    raw = synth_corpus(str(root / "raw"), SynthConfig())  # the demo corpus: 480 + 48 + 8
    ws = Workspace.at(root / "ws")
    synth_manifest(raw, ws, "demo")
    spec = fit_encoder(ws, "demo", ws.encoders("demo-tiny"))
    enc = parse_encoder(spec, ws)  # the fitted encoder's workspace-relative id: encoder:demo-tiny
    config = EmbedConfig(encoder=enc.id, part_size=64)
    encoder = load_encoder(enc)
    for plan in plan_parts(ws, "demo", config):
        embed_part(ws, "demo", plan.index, config, encoder)
    return SimpleNamespace(
        ws=ws,
        root=str(root / "ws"),
        corpus="demo",
        encoder=enc.id,
        embeddings_dir=embeddings_dir(ws, "demo", enc),
        failures_dir=failures_dir(ws, "demo", enc),
        raw=raw,
        holdout=read_holdout(spec),
    )


# --- full disks (issue 12): a real tmpfs where the machine allows mounting one ---------------


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs at ``tmp_path/disk`` (root only; skipped where mounting is refused)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "ragvid-test", str(mnt)], capture_output=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def _fill_disk(disk, leave_pages: int):
    """Fill ``disk`` up to ``leave_pages`` free 4 KiB pages with a filler file."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - leave_pages * 4096))
    return filler


@pytest.fixture
def fill_disk():
    """``fill_disk(disk, leave_pages)``: fill a small disk up to that many free 4 KiB pages."""
    return _fill_disk


# --- browser (owner: lead — web UI and Prefect UI tests) -----------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, driven by Playwright — one launch per test module.

    Not per session: Playwright's sync API keeps an asyncio loop running in the main thread
    while it is open, and every later test calling ``asyncio.run`` (Prefect's client,
    ``flow.to_deployment``) would fail with "cannot be called from a running event loop".

    CI installs it (``.ci/run``: ``apt-get install chromium``); elsewhere the browser tests skip
    with the command that installs it."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} missing: apt-get install chromium (CI's .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh browser context + page per test (no cookies or storage shared)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    yield pg
    ctx.close()
