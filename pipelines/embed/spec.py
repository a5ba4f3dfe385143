"""One place that parses an encoder spec (open_clip's ``factory.py`` idea: strip prefixes once).

Every other module receives an :class:`EncoderSpec` and reads its fields; nothing else splits
``open_clip:`` strings, joins encoder folder names or decides whether weights are random.

Accepted forms (``ragvid encoder list`` shows the presets):

* a preset name (``vit-b-32``, ``tiny``, …) or ``preset:<name>``;
* the name of an encoder fitted into the workspace (``<ws>/encoders/<name>``, written by
  ``ragvid encoder fit``), or ``encoder:<name>`` — the workspace-relative id tables record;
* ``open_clip:<arch>/<pretrained tag>`` or ``open_clip:<arch>/<checkpoint file>``;
* ``open_clip:hf-hub:<org>/<repo>`` (open_clip's Hugging Face form, as clip-retrieval and
  open_clip's model cards write it) — the hub repo of a known pretrained tag is recorded as that
  tag (``open_clip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K`` is
  ``open_clip:ViT-B-32/laion2b_s34b_b79k``: same weights, same folder);
* a bare OpenAI CLIP name (``ViT-B/32``, ``ViT-L/14@336px``, ``RN50``, … — what clip-retrieval's
  ``--clip_model`` defaults to): open_clip's ``<arch>/openai`` weights, the CLIP paper's own;
* ``open_clip:local-dir:<folder>`` (open_clip's hub layout);
* ``hf_clip:<hub repo or local folder>`` — a ``transformers`` ``CLIPModel`` (``config.json`` +
  weights, with its tokenizer and ``preprocessor_config.json``), as clip-retrieval names it;
* any other ``<scheme>:<name>`` id — vectors made outside ragvid (bring-your-own embeddings
  tables): their folders and indexes resolve by that id, but ragvid cannot load the encoder.

Local files and folders inside the workspace are recorded relative to its root (a relative
path in a spec is looked up in the workspace first, then in the current directory), so the
ids tables record survive a moved workspace like the slugs do.

The **slug** (the embeddings folder name) never contains a machine's absolute path: fitted
encoders are named relative to the workspace, outside folders and checkpoints by their file
name plus a digest of their config / size, so a workspace moved with ``mv`` still finds its
embeddings.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from ragvid.schemas.workspace import Workspace, slug

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
HF_CONFIG_NAME = "config.json"  # a transformers CLIPModel folder
HF_WEIGHTS_NAMES = ("model.safetensors", "pytorch_model.bin")
LOCAL_DIR = "open_clip:local-dir:"
HF_HUB = "open_clip:hf-hub:"
HF_CLIP = "hf_clip:"
FITTED = "encoder:"

Kind = Literal[
    "preset", "fitted", "local-dir", "checkpoint", "pretrained", "hf-hub", "hf-clip", "external"
]

# OpenAI's CLIP names (the `clip` package, clip-retrieval's default) → open_clip architectures
OPENAI_NAMES = {
    "RN50": "RN50",
    "RN101": "RN101",
    "RN50x4": "RN50x4",
    "RN50x16": "RN50x16",
    "RN50x64": "RN50x64",
    "ViT-B/32": "ViT-B-32",
    "ViT-B/16": "ViT-B-16",
    "ViT-L/14": "ViT-L-14",
    "ViT-L/14@336px": "ViT-L-14-336",
}


@dataclass(frozen=True)
class Preset:
    """A named encoder: the open_clip architecture, its weights (or none) and why it exists."""

    arch: str
    pretrained: str | None
    doc: str
    preprocess: dict | None = None
    seed: int = 0


PRESETS: dict[str, Preset] = {
    "vit-b-32": Preset(
        "ViT-B-32", "laion2b_s34b_b79k", "the paper's default CLIP (dim 512); needs the weights"
    ),
    "tiny": Preset(
        "ragvid-tiny",
        None,
        "RANDOM weights, for tests only: 4M-param CLIP (ResNet [1,1,1,1]×16 on 64×64 squashed "
        "frames; dim 64); fit it with `ragvid encoder fit` to get useful vectors",
        preprocess={"resize_mode": "squash"},
    ),
    "vit-b-32-random": Preset(
        "ViT-B-32", None, "RANDOM weights: ViT-B-32's cost without its weights (benchmarks)"
    ),
}

DEFAULT_ENCODER = "vit-b-32"


@dataclass(frozen=True)
class EncoderSpec:
    """A parsed encoder spec.

    ``id`` is what tables and index manifests record (machine-independent where the encoder
    lives in the workspace); ``load`` is what :func:`ragvid.pipelines.embed.encoder.load_encoder`
    opens on this machine (absolute paths; safe to ship to Ray workers); ``slug`` names folders.
    """

    kind: Kind
    id: str
    load: str
    slug: str
    arch: str | None = None
    weights: str | None = None
    name: str | None = None
    random: bool = False

    def __str__(self) -> str:
        return self.id

    @property
    def ecosystem_id(self) -> str | None:
        """The name clip-retrieval / all_clip load these weights by (``ViT-B/32`` for OpenAI's,
        ``open_clip:<arch>/<tag>``, ``open_clip:hf-hub:<repo>``, ``hf_clip:<repo>``), or None
        for weights only this machine has (fitted, local folders and checkpoints, random)."""
        if self.kind in ("pretrained", "preset") and self.arch and self.weights and not self.random:
            if self.weights == "openai":
                for name, arch in OPENAI_NAMES.items():
                    if arch == self.arch:
                        return name
            return f"open_clip:{self.arch}/{self.weights}"
        if self.kind == "hf-hub":
            return self.id
        if self.kind == "hf-clip" and not os.path.isabs(self.weights or "/"):  # a hub repo
            return self.id
        return None

    @property
    def warning(self) -> str | None:
        """What to tell the user when the vectors will mean nothing (random weights)."""
        if not self.random:
            return None
        return (
            f"encoder '{self.name or self.id}' has RANDOM weights: every pair of videos scores "
            "≈ 1, so dedup, search and neighbour lists are meaningless — for tests only. Fit "
            "one with `ragvid encoder fit` or use real CLIP weights (vit-b-32)"
        )


def list_encoders() -> dict[str, str]:
    """Preset name → what it is (full ``open_clip:`` specs and fitted names work too)."""
    return {name: p.doc for name, p in PRESETS.items()}


def _digest(*parts: object) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:10]


def _folder_slug(
    folder: str,
    prefix: str = "local-dir",
    config: str = CONFIG_NAME,
    weights: tuple[str, ...] = (WEIGHTS_NAME,),
) -> str:
    """Basename + digest of the folder's config and weight size (not of its absolute path)."""
    cfg = os.path.join(folder, config)
    blob = Path(cfg).read_bytes() if os.path.isfile(cfg) else b""
    files = [os.path.join(folder, w) for w in weights]
    size = sum(os.path.getsize(f) for f in files if os.path.isfile(f))
    return slug(f"{prefix}-{os.path.basename(folder.rstrip('/'))}-{_digest(blob, size)}")


def _local_path(text: str, ws: Workspace | None) -> str | None:
    """The absolute path ``text`` names: as given when absolute, else relative to the
    workspace root (what recorded ids hold) and then the current directory; None if neither
    exists."""
    if os.path.isabs(text):
        return text if os.path.exists(text) else None
    if ws is not None and "://" not in ws.root:
        inside = os.path.join(ws.root, text)
        if os.path.exists(inside):
            return os.path.abspath(inside)
    return os.path.abspath(text) if os.path.exists(text) else None


def _recorded_path(path: str, ws: Workspace | None) -> str:
    """``path`` as ids record it: relative to the workspace root when inside it, else absolute."""
    if ws is not None and "://" not in ws.root:
        root = os.path.realpath(ws.root)
        real = os.path.realpath(path)
        if real.startswith(root + os.sep):
            return os.path.relpath(real, root)
    return path


@lru_cache(maxsize=256)
def _tag_for_hub_repo(repo: str) -> tuple[str, str] | None:
    """The open_clip (arch, pretrained tag) whose weights are the hub repo ``repo`` — one
    answer only (an OpenAI repo is both ``<arch>`` and ``<arch>-quickgelu``: the plain arch is
    taken, loaded with the tag's QuickGELU)."""
    import open_clip

    want = repo.strip("/").lower()
    hits = []
    for arch, tag in open_clip.list_pretrained():
        hub = ((open_clip.get_pretrained_cfg(arch, tag) or {}).get("hf_hub") or "").strip("/")
        if hub.lower() == want:
            hits.append((arch, tag))
    plain = [h for h in hits if not h[0].endswith("-quickgelu")] or hits
    return plain[0] if len(plain) == 1 else None


def _fitted_folder(ws: Workspace | None, name: str) -> str | None:
    if ws is None:
        return None
    folder = ws.encoders(name)
    return folder if os.path.isfile(os.path.join(folder, CONFIG_NAME)) else None


def _workspace_name(ws: Workspace | None, folder: str) -> str | None:
    """``name`` when ``folder`` is ``<ws>/encoders/<name>`` (a fitted encoder of this workspace)."""
    if ws is None:
        return None
    root = os.path.realpath(ws.encoders_root())
    real = os.path.realpath(folder)
    if os.path.dirname(real) == root:
        return os.path.basename(real)
    return None


def fitted_spec(name: str, folder: str) -> EncoderSpec:
    """The spec of ``<ws>/encoders/<name>``: recorded as ``encoder:<name>``, workspace-relative."""
    return EncoderSpec(
        kind="fitted",
        id=FITTED + name,
        load=LOCAL_DIR + os.path.abspath(folder),
        slug=slug(f"encoder-{name}"),
        arch=None,
        weights=os.path.abspath(folder),
        name=name,
    )


def _pretrained(arch: str, weights: str) -> EncoderSpec:
    text = f"open_clip:{arch}/{weights}"
    return EncoderSpec(
        kind="pretrained",
        id=text,
        load=text,
        slug=slug(text),
        arch=arch,
        weights=weights,
        name=f"{arch}/{weights}",
    )


_HUB_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _hf_hub(text: str) -> EncoderSpec:
    """``open_clip:hf-hub:<org>/<repo>``: a known tag's repo is that tag, else the hub id."""
    repo = text[len(HF_HUB) :].strip().strip("/")
    if not _HUB_REPO.fullmatch(repo):
        raise ValueError(
            f"encoder spec '{text}': expected open_clip:hf-hub:<org>/<repo>, e.g. "
            "open_clip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
        )
    known = _tag_for_hub_repo(repo)
    if known is not None:
        return _pretrained(*known)
    enc_id = HF_HUB + repo
    return EncoderSpec(
        kind="hf-hub", id=enc_id, load=enc_id, slug=slug(enc_id), weights=repo, name=repo
    )


def _hf_clip(text: str, ws: Workspace | None) -> EncoderSpec:
    """``hf_clip:<hub repo or local folder>`` (a transformers CLIPModel)."""
    target = text[len(HF_CLIP) :].strip()
    if not target:
        raise ValueError(f"encoder spec '{text}': expected hf_clip:<hub repo or local folder>")
    local = _local_path(target, ws)
    if local is not None:
        if not os.path.isfile(os.path.join(local, HF_CONFIG_NAME)):
            raise FileNotFoundError(
                f"encoder '{text}': {local} has no {HF_CONFIG_NAME} — point hf_clip: at a "
                "folder written by transformers' CLIPModel.save_pretrained (or a hub repo id)"
            )
        recorded = _recorded_path(local, ws)
        inside = not os.path.isabs(recorded)
        return EncoderSpec(
            kind="hf-clip",
            id=HF_CLIP + recorded,
            load=HF_CLIP + local,
            slug=slug(f"hf_clip-{recorded}")
            if inside
            else _folder_slug(local, "hf_clip", HF_CONFIG_NAME, HF_WEIGHTS_NAMES),
            weights=local,
            name=os.path.basename(local.rstrip("/")),
        )
    if os.path.isabs(target) or target.startswith(".") or not _HUB_REPO.fullmatch(target):
        raise FileNotFoundError(
            f"encoder '{text}': no folder {target} (looked in the workspace and the current "
            "directory), and it is not a hub repo id (<org>/<name>)"
        )
    enc_id = HF_CLIP + target
    return EncoderSpec(
        kind="hf-clip", id=enc_id, load=enc_id, slug=slug(enc_id), weights=target, name=target
    )


def parse_encoder(spec: str | EncoderSpec, workspace: str | Workspace | None = None) -> EncoderSpec:
    """Parse ``spec`` once; unknown names fail listing what is available.

    ``workspace`` resolves fitted encoder names (``demo-tiny``, ``encoder:demo-tiny``) and
    records local files inside it relative to its root.
    """
    if isinstance(spec, EncoderSpec):
        return spec
    ws = Workspace.at(workspace) if isinstance(workspace, str | os.PathLike) else workspace
    text = str(spec).strip()
    if not text:
        raise ValueError(f"empty encoder spec; use a preset ({sorted(PRESETS)}) or a fitted name")
    name = text.removeprefix("preset:")
    if name in PRESETS:
        p = PRESETS[name]
        enc_id = f"open_clip:{p.arch}/{p.pretrained}" if p.pretrained else f"preset:{name}"
        return EncoderSpec(
            kind="preset",
            id=enc_id,
            load=f"preset:{name}",
            slug=slug(enc_id) if p.pretrained else slug(f"preset-{name}"),
            arch=p.arch,
            weights=p.pretrained,
            name=name,
            random=p.pretrained is None,
        )
    if text.startswith("preset:"):
        raise KeyError(f"unknown encoder preset '{name}'. Available: {sorted(PRESETS)}")
    if text.startswith(FITTED):
        fitted = text[len(FITTED) :]
        folder = _fitted_folder(ws, fitted)
        if folder is None:
            where = ws.encoders(fitted) if ws is not None else "<workspace>/encoders/" + fitted
            raise FileNotFoundError(
                f"encoder '{text}' is a fitted encoder of a workspace, but {where} has no "
                f"{CONFIG_NAME} — pass the workspace it was fitted in, or refit it with "
                f"`ragvid encoder fit --name {fitted}`"
            )
        return fitted_spec(fitted, folder)
    if text.startswith(HF_HUB):
        return _hf_hub(text)
    if text.startswith(HF_CLIP):
        return _hf_clip(text, ws)
    if text.startswith(LOCAL_DIR):
        given = text[len(LOCAL_DIR) :]
        folder = _local_path(given, ws) or os.path.abspath(given)
        inside = _workspace_name(ws, folder)
        if inside is not None:
            return fitted_spec(inside, folder)
        return EncoderSpec(
            kind="local-dir",
            id=LOCAL_DIR + _recorded_path(folder, ws),
            load=LOCAL_DIR + folder,
            slug=_folder_slug(folder),
            weights=folder,
            name=os.path.basename(folder),
        )
    if text.startswith("open_clip:"):
        body = text[len("open_clip:") :]
        if "/" not in body:
            raise ValueError(
                f"encoder spec '{text}': expected open_clip:<arch>/<pretrained tag or checkpoint "
                f"path>, open_clip:hf-hub:<org>/<repo>, open_clip:local-dir:<folder>, or a "
                f"preset ({sorted(PRESETS)})"
            )
        arch, weights = body.split("/", 1)
        path = _local_path(weights, ws)
        if path is not None and os.path.isfile(path):
            stem = os.path.splitext(os.path.basename(path))[0]
            recorded = f"open_clip:{arch}/{_recorded_path(path, ws)}"
            return EncoderSpec(
                kind="checkpoint",
                id=recorded,
                load=f"open_clip:{arch}/{path}",
                slug=slug(f"open_clip-{arch}-{stem}-{_digest(os.path.getsize(path))}"),
                arch=arch,
                weights=path,
                name=stem,
            )
        return _pretrained(arch, weights)
    folder = _fitted_folder(ws, text)
    if folder is not None:
        return fitted_spec(text, folder)
    if text in OPENAI_NAMES:  # after fitted names: a workspace may call an encoder "RN50"
        return _pretrained(OPENAI_NAMES[text], "openai")
    scheme = text.split(":", 1)[0]
    if ":" in text and scheme and scheme not in ("open_clip", "preset") and "/" not in scheme:
        return EncoderSpec(kind="external", id=text, load=text, slug=slug(text), name=text)
    fitted = []
    if ws is not None and os.path.isdir(ws.encoders_root()):
        fitted = sorted(
            n for n in os.listdir(ws.encoders_root()) if _fitted_folder(ws, n) is not None
        )
    raise KeyError(
        f"unknown encoder '{text}'. Presets: {sorted(PRESETS)}; fitted in this workspace: "
        f"{fitted or 'none'}; OpenAI CLIP names: {list(OPENAI_NAMES)}; or "
        "open_clip:<arch>/<pretrained tag or checkpoint path>, open_clip:hf-hub:<org>/<repo>, "
        "open_clip:local-dir:<folder>, hf_clip:<hub repo or folder>"
    )
