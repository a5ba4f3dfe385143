"""Paths of a ragvid workspace (local folder or fsspec URI), one place for the layout."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .io import fs_and_path, join


@dataclass(frozen=True)
class Workspace:
    root: str

    @classmethod
    def at(cls, root: str | os.PathLike) -> Workspace:
        return cls(str(root).rstrip("/") or "/")

    def ensure_writable(self) -> Workspace:
        """Create the root and prove it is writable, with a message that says what to fix."""
        fs, path = fs_and_path(self.root)
        probe = join(path, ".ragvid-write-test")
        try:
            fs.makedirs(path, exist_ok=True)
            with fs.open(probe, "wb") as fh:
                fh.write(b"ok")
            fs.rm(probe)
        except (OSError, PermissionError) as exc:
            raise PermissionError(
                f"workspace {self.root} is not writable ({exc.__class__.__name__}: {exc}); "
                "pass --workspace <a folder you can write> or fix its permissions"
            ) from exc
        return self

    def corpus(self, name: str) -> str:
        return join(self.root, "corpora", name)

    def manifest(self, corpus: str) -> str:
        return join(self.corpus(corpus), "manifest")

    def rejects(self, corpus: str) -> str:
        return join(self.corpus(corpus), "rejects")

    def embeddings(self, corpus: str, encoder_slug: str) -> str:
        return join(self.corpus(corpus), "embeddings", encoder_slug)

    def failures(self, corpus: str) -> str:
        return join(self.corpus(corpus), "failures")

    def index(self, name: str) -> str:
        return join(self.root, "indexes", name)

    def neighbours(self, name: str) -> str:
        return join(self.root, "neighbours", name)

    def run(self, name: str) -> str:
        return join(self.root, "runs", name)

    def generations(self, job: str) -> str:
        return join(self.root, "generations", job)

    def evals(self, run: str) -> str:
        return join(self.root, "evals", run)

    def encoders(self, name: str) -> str:
        return join(self.root, "encoders", name)

    def raw(self, corpus: str) -> str:
        """Where `corpus synth` writes the generated source corpus (WebVid layout)."""
        return join(self.root, "raw", corpus)


def slug(text: str) -> str:
    """A filesystem-safe name for an encoder id such as 'open_clip:ViT-B-32/laion2b'."""
    out = "".join(c if c.isalnum() or c in "-_." else "-" for c in text)
    return "-".join(p for p in out.split("-") if p)[:120]
