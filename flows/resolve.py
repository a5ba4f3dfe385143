"""One resolver for the names users type: index → folder / encoder / retrieval source, run →
adapter, base + adapter → pipeline and model id, corpus → evaluation reference set.

The CLI commands and the Prefect flows both call this, so a name means the same thing from
either side (the first wave had four copies that disagreed on fitted encoder names, model ids
and quarantined reference videos).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc

from ragvid.pipelines.embed.spec import EncoderSpec, parse_encoder
from ragvid.schemas import FAILURES, MANIFEST, RetrievalConfig
from ragvid.schemas.io import exists, fs_and_path, list_parts, read_table
from ragvid.schemas.markers import TableState, is_managed
from ragvid.schemas.workspace import INDEX_JSON, Workspace

NO_ADAPTER = "no-adapter"
TINY_BASE = "tiny"  # --base tiny: the tiny preset, written into the workspace once


@dataclass(frozen=True)
class Resolver:
    ws: Workspace

    @classmethod
    def at(cls, workspace: str | Workspace) -> Resolver:
        return cls(Workspace.at(workspace))

    # -- encoders and embeddings --------------------------------------------------------------

    def encoder(self, spec: str | EncoderSpec) -> EncoderSpec:
        return parse_encoder(spec, self.ws)

    def corpus_encoder(self, corpus: str) -> EncoderSpec:
        """The encoder of the corpus's only embeddings folder (for commands whose --encoder is
        left out); several folders or none is an error listing what there is."""
        from ragvid.pipelines.index.parts import embedding_parts, part_encoder

        fs, root = fs_and_path(self.ws.embeddings_root(corpus))
        folders = (
            sorted(p for p in fs.ls(root, detail=False) if fs.isdir(p)) if fs.exists(root) else []
        )
        folders = [f for f in folders if TableState(f).parts()]
        if len(folders) != 1:
            names = [f.rstrip("/").rsplit("/", 1)[-1] for f in folders]
            raise ValueError(
                f"corpus '{corpus}' has {len(folders)} embedded encoder folder(s) {names or ''} — "
                + (
                    f"run `ragvid embed --corpus {corpus} --encoder …` first"
                    if not folders
                    else "pass --encoder to choose one"
                )
            )
        infos = [i for i in embedding_parts(folders[0]) if i.rows]
        if not infos:
            raise ValueError(f"corpus '{corpus}': {folders[0]} holds no rows — run `ragvid embed`")
        return self.encoder(part_encoder(infos[0]))

    def embeddings(self, corpus: str, encoder: str | EncoderSpec | None) -> str:
        """The embeddings folder of ``corpus`` under ``encoder`` (None: the corpus's only one):
        it must exist and be complete (every manifest row in a finished part) — a partial
        embedding is refused."""
        from ragvid.pipelines.embed.stage import check_complete

        spec = self.corpus_encoder(corpus) if encoder is None else self.encoder(encoder)
        path = self.ws.embeddings(corpus, spec.slug)
        if not TableState(path).parts() and not is_managed(path):
            raise FileNotFoundError(
                f"no embeddings for corpus '{corpus}' with encoder '{spec.id}' at {path} — run "
                f"`ragvid embed --corpus {corpus} --encoder {spec.name or spec.id}` first"
            )
        return check_complete(self.ws, corpus, spec)

    # -- indexes --------------------------------------------------------------------------------

    def index_names(self) -> list[str]:
        from ragvid.pipelines.index.layout import list_indexes

        return [m.path.rstrip("/").rsplit("/", 1)[-1] for m in list_indexes(self.ws.root)]

    def index(self, name: str) -> str:
        path = self.ws.index(name)
        if not exists(self.ws.index_layout(name).manifest):
            raise FileNotFoundError(
                f"no index '{name}' in {self.ws.root} ({INDEX_JSON} missing). Available: "
                f"{self.index_names() or 'none'} — build one with `ragvid index build`"
            )
        return path

    def index_encoder(self, name: str) -> EncoderSpec:
        """The encoder the index was built with (its manifest records the spec id)."""
        from ragvid.pipelines.index.layout import IndexManifest

        return self.encoder(IndexManifest.load(self.index(name)).encoder)

    def index_corpus(self, name: str) -> str | None:
        """The workspace corpus the index's current version was built from (its embeddings or
        manifest live under ``corpora/<corpus>/``); None for an index built from elsewhere."""
        from ragvid.pipelines.index.layout import IndexManifest

        man = IndexManifest.load(self.index(name))
        sources = [str(s) for s in (man.source.get("uri"), man.source.get("manifest")) if s]
        fs, root = fs_and_path(self.ws.corpora_root())
        if not sources or not fs.exists(root):
            return None
        for p in sorted(fs.ls(root, detail=False)):
            corpus = p.rstrip("/").rsplit("/", 1)[-1]
            folders = (self.ws.embeddings_root(corpus), self.ws.manifest(corpus))
            if any(_inside(s, f) for s in sources for f in folders):
                return corpus
        return None

    def index_split_table(self, name: str) -> str | None:
        """The train / val table of the corpus the index was built from (None: no split, or
        an index built from outside the workspace's corpora)."""
        corpus = self.index_corpus(name)
        return self.split_table(corpus) if corpus is not None else None

    def retrieval(
        self,
        index: str | None,
        k: int,
        encoder: str | EncoderSpec | None = None,
        config: RetrievalConfig | None = None,
    ):
        """A RetrievalSource over a named index (text queries, the paper's filters); the query
        encoder defaults to the index's own."""
        if index is None:
            return None
        from ragvid.model.retrieval_source import RetrieverSource
        from ragvid.pipelines.embed.encoder import load_encoder

        path = self.index(index)
        spec = self.encoder(encoder) if encoder is not None else self.index_encoder(index)
        cfg = (config or RetrievalConfig()).model_copy(update={"k": k})
        return RetrieverSource.open(path, load_encoder(spec), cfg)

    # -- model side ---------------------------------------------------------------------------

    def run_dir(self, run: str) -> str:
        """A run name under ``<ws>/runs/``, or a folder path."""
        return run if os.path.isdir(run) and os.sep in run else self.ws.run(run)

    def adapter(self, run: str | None) -> str | None:
        """The folder holding the run's trained adapter (None: no adapter)."""
        if run is None:
            return None
        path = self.run_dir(run)
        if not os.path.isfile(self.ws.adapter_weights(path)):
            raise FileNotFoundError(
                f"no trained adapter at {path} ({os.path.basename(self.ws.adapter_weights(path))} "
                f"missing) — run `ragvid train --run {run} …` (or the finetune flow) first, or "
                "pass the folder that holds it"
            )
        return path

    def base(self, base: str | None) -> str:
        """The base model folder: None or ``tiny`` is the tiny preset (random weights, for
        offline runs and tests), written once into the workspace; a shipped trained preset
        (``synth32``: :data:`~ragvid.model.presets.SHIPPED_BASES`) is its folder in the
        package; a base trained here (``ragvid model train-base --name N``) is
        ``<ws>/models/N``; anything else must be a diffusers folder."""
        from ragvid.model.presets import SHIPPED_BASES, shipped_base

        if base is None or base == TINY_BASE:
            from ragvid.model.presets import save_tiny_base

            folder = self.ws.base_models("tiny-base")
            if not exists(os.path.join(folder, "model_index.json")):
                save_tiny_base(folder)
            return folder
        if Path(base, "model_index.json").is_file():
            return base
        trained = self.ws.base_models(base)
        if os.sep not in base and exists(os.path.join(trained, "model_index.json")):
            return trained
        if base in SHIPPED_BASES:
            return str(shipped_base(base))
        names = ", ".join(f"'{n}'" for n, _, _ in self.base_names() if n != TINY_BASE)
        raise FileNotFoundError(
            f"--base {base}: not a diffusers model folder (no model_index.json) nor a base name "
            f"— pass a local ZeroScope/ModelScope-T2V folder, '{TINY_BASE}' for the tiny offline "
            f"preset, or a trained base ({names}; `ragvid model list`)"
        )

    def base_names(self) -> list[tuple[str, str, str]]:
        """(name, folder, what it is) for every name :meth:`base` takes besides folders."""
        from ragvid.model.presets import SHIPPED_BASES

        out = [(TINY_BASE, self.ws.base_models("tiny-base"), "tiny preset, random weights")]
        out += [(n, str(p), d) for n, (p, d) in SHIPPED_BASES.items()]
        fs, root = fs_and_path(os.path.dirname(self.ws.base_models("tiny-base")))
        if fs.exists(root):
            for p in sorted(fs.ls(root, detail=False)):
                name = p.rstrip("/").rsplit("/", 1)[-1]
                if name != "tiny-base" and fs.exists(f"{p}/model_index.json"):
                    out.append((name, self.ws.base_models(name), "trained in this workspace"))
        return out

    def cogvideox_base(self, base: str | None) -> str:
        """A CogVideoX base folder for FCA / text-video prediction; None or ``tiny`` means the
        tiny CogVideoX preset (random weights, offline runs and tests), written once into the
        workspace."""
        if base is None or base == TINY_BASE:
            from ragvid.model.fca_presets import save_tiny_cogvideox

            folder = self.ws.base_models("cogvideox-tiny")
            if not exists(os.path.join(folder, "model_index.json")):
                save_tiny_cogvideox(folder)
            return folder
        if not Path(base, "model_index.json").is_file() or not Path(base, "transformer").is_dir():
            raise FileNotFoundError(
                f"--base {base}: not a diffusers CogVideoX folder (model_index.json + "
                f"transformer/) — pass a local THUDM/CogVideoX-2b folder, or '{TINY_BASE}' for "
                "the tiny offline preset"
            )
        return base

    def _portable(self, path: str) -> str:
        """``ws:<relative path>`` for a folder inside the workspace (moves with it), else the
        path as given (an external model folder such as /models/zeroscope)."""
        root = os.path.realpath(self.ws.root)
        real = os.path.realpath(path)
        if real == root or real.startswith(root + os.sep):
            return "ws:" + os.path.relpath(real, root)
        return str(path)

    def model_id(self, base: str, adapter: str | None) -> str:
        """Base folder + adapter folder + a digest of the adapter weights: a retrained adapter
        in the same folder is another model, so its jobs regenerate instead of reusing the old
        videos. Folders inside the workspace are named relative to it."""
        if adapter is None:
            return f"{self._portable(base)}+{NO_ADAPTER}"
        digest = hashlib.sha256()
        with open(self.ws.adapter_weights(adapter), "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return f"{self._portable(base)}+{self._portable(adapter)}@{digest.hexdigest()[:12]}"

    def pipeline(self, base: str, adapter: str | None):
        from ragvid.model.pipeline_ragme import RagmePipeline

        pipe = RagmePipeline.from_pretrained(base, adapter=adapter)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def check_adapter(self, adapter: str | None, retrieval) -> None:
        """Refuse generating with the adapter in folder ``adapter`` (what :meth:`adapter`
        returns) from ``retrieval`` — what :meth:`retrieval` returns, or an index name — when
        the retrieved frame embeddings come from another encoder than the one the adapter was
        trained on (:class:`~ragvid.model.adapter.EncoderMismatchError` naming both ids and
        the fix). An adapter saved before adapters recorded their encoder passes with an
        :class:`~ragvid.model.adapter.UncheckedEncoderWarning`. Every generation path calls
        this once it holds both (no adapter or no retrieval: nothing to check)."""
        if adapter is None or retrieval is None:
            return
        from ragvid.model.adapter import adapter_encoder, check_adapter_encoder

        if isinstance(retrieval, str):
            index_enc, where = self.index_encoder(retrieval).id, f"index '{retrieval}'"
        else:
            index_enc = getattr(retrieval, "encoder_id", None)
            folder = getattr(retrieval, "index_dir", None)
            where = f"index {folder}" if folder else "the retrieval source"
        check_adapter_encoder(
            adapter_encoder(adapter), index_enc, adapter=f"adapter {adapter}", index=where
        )

    # -- evaluation -----------------------------------------------------------------------------

    def quarantined(self, corpus: str) -> set[str]:
        """Ids any embedding run of ``corpus`` quarantined (undecodable for every encoder)."""
        out: set[str] = set()
        fs, root = fs_and_path(self.ws.failures(corpus))
        if not fs.exists(root):
            return out
        for folder in [root, *(p for p in fs.ls(root, detail=False) if fs.isdir(p))]:
            for part in list_parts(folder):
                out.update(read_table(part, FAILURES, columns=["video_id"]).column(0).to_pylist())
        return out

    def reference_videos(self, corpus: str, count: int) -> list[str]:
        """Up to ``count`` real videos of ``corpus`` for FVD/KVD (their uris)."""
        return [r["uri"] for r in self.reference_rows(corpus, count)]

    def reference_rows(
        self, corpus: str, count: int | None = None, split: str | None = None
    ) -> list[dict]:
        """Up to ``count`` manifest rows (video_id, uri, caption) of ``corpus`` — on side
        ``split`` of its train / val split when given — in manifest order, never a file the
        embedding stage quarantined (it would fail decoding again)."""
        from ragvid.pipelines.corpus.parts import manifest_files

        wanted = None
        if split is not None:
            from ragvid.pipelines.corpus.split import split_ids

            table = self.split_table(corpus)
            if table is None:
                raise FileNotFoundError(
                    f"corpus '{corpus}' has no train / val split — run `ragvid corpus split "
                    f"{corpus}` (then rebuild its index, which leaves val out)"
                )
            wanted = split_ids(table, split)
        bad = self.quarantined(corpus)
        out: list[dict] = []
        for file in manifest_files(self.ws.manifest(corpus), corpus):
            t = read_table(file, MANIFEST, columns=["video_id", "uri", "caption"])
            if wanted is not None:
                t = t.filter(pc.is_in(t.column("video_id"), value_set=wanted))
            for row in t.to_pylist():
                if row["video_id"] not in bad:
                    out.append(row)
                    if count is not None and len(out) >= count:
                        return out
        return out

    # -- held-out split -------------------------------------------------------------------------

    def split_table(self, corpus: str) -> str | None:
        """The corpus's ``split.parquet`` (``ragvid corpus split``), None when it has none."""
        path = self.ws.split(corpus)
        return path if exists(path) else None

    def duplicates_for_split(self, corpus: str, given: str | None) -> str | None:
        """The duplicates table that keeps near-duplicate groups on one side of a split:
        ``given`` (an index name or a ``.parquet`` path), else the corpus's index's table when
        `ragvid index dedup` wrote one, else None."""
        if given is not None and given.endswith(".parquet"):
            if not exists(given):
                raise FileNotFoundError(f"--duplicates {given}: no such file")
            return given
        path = self.ws.index_layout(given or corpus).duplicates
        if exists(path):
            return path
        if given is not None:
            raise FileNotFoundError(
                f"--duplicates {given}: index '{given}' has no duplicates table at {path} — run "
                f"`ragvid index dedup --corpus {corpus} --name {given}` first, or leave it out"
            )
        return None


def _inside(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or below it (local paths compared after resolving links)."""
    if "://" not in path and "://" not in folder:
        path, folder = os.path.realpath(path), os.path.realpath(folder)
    path, folder = path.rstrip("/"), folder.rstrip("/")
    return path == folder or path.startswith(folder + "/")
