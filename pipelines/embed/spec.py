"""One place that parses an encoder spec (open_clip's ``factory.py`` idea: strip prefixes once).

Every other module receives an :class:`EncoderSpec` and reads its fields; nothing else splits
``open_clip:`` strings, joins encoder folder names or decides whether weights are random.

Accepted forms (``ragvid encoder list`` shows the presets):

* a preset name (``vit-b-32``, ``tiny``, …) or ``preset:<name>``;
* the name of an encoder fitted into the workspace (``<ws>/encoders/<name>``, written by
  ``ragvid encoder fit``), or ``encoder:<name>`` — the workspace-relative id tables record;
* ``open_clip:<arch>/<pretrained tag>`` or ``open_clip:<arch>/<checkpoint file>``;
* ``open_clip:local-dir:<folder>`` (open_clip's hub layout);
* any other ``<scheme>:<name>`` id — vectors made outside ragvid (bring-your-own embeddings
  tables): their folders and indexes resolve by that id, but ragvid cannot load the encoder.

The **slug** (the embeddings folder name) never contains a machine's absolute path: fitted
encoders are named relative to the workspace, outside folders and checkpoints by their file
name plus a digest of their config / size, so a workspace moved with ``mv`` still finds its
embeddings.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ragvid.schemas.workspace import Workspace, slug

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
LOCAL_DIR = "open_clip:local-dir:"
FITTED = "encoder:"

Kind = Literal["preset", "fitted", "local-dir", "checkpoint", "pretrained", "external"]


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


def _folder_slug(folder: str) -> str:
    """Basename + digest of the folder's config and weight size (not of its absolute path)."""
    cfg = os.path.join(folder, CONFIG_NAME)
    weights = os.path.join(folder, WEIGHTS_NAME)
    blob = Path(cfg).read_bytes() if os.path.isfile(cfg) else b""
    size = os.path.getsize(weights) if os.path.isfile(weights) else 0
    return slug(f"local-dir-{os.path.basename(folder.rstrip('/'))}-{_digest(blob, size)}")


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


def parse_encoder(spec: str | EncoderSpec, workspace: str | Workspace | None = None) -> EncoderSpec:
    """Parse ``spec`` once; unknown names fail listing what is available.

    ``workspace`` resolves fitted encoder names (``demo-tiny``, ``encoder:demo-tiny``).
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
    if text.startswith(LOCAL_DIR):
        folder = os.path.abspath(text[len(LOCAL_DIR) :])
        inside = _workspace_name(ws, folder)
        if inside is not None:
            return fitted_spec(inside, folder)
        return EncoderSpec(
            kind="local-dir",
            id=LOCAL_DIR + folder,
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
                f"path>, open_clip:local-dir:<folder>, or a preset ({sorted(PRESETS)})"
            )
        arch, weights = body.split("/", 1)
        if os.path.isfile(weights):
            path = os.path.abspath(weights)
            stem = os.path.splitext(os.path.basename(path))[0]
            return EncoderSpec(
                kind="checkpoint",
                id=f"open_clip:{arch}/{path}",
                load=f"open_clip:{arch}/{path}",
                slug=slug(f"open_clip-{arch}-{stem}-{_digest(os.path.getsize(path))}"),
                arch=arch,
                weights=path,
                name=stem,
            )
        return EncoderSpec(
            kind="pretrained",
            id=text,
            load=text,
            slug=slug(text),
            arch=arch,
            weights=weights,
            name=f"{arch}/{weights}",
        )
    folder = _fitted_folder(ws, text)
    if folder is not None:
        return fitted_spec(text, folder)
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
        f"{fitted or 'none'}; or open_clip:<arch>/<pretrained tag or checkpoint path>, "
        "open_clip:local-dir:<folder>"
    )
