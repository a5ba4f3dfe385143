"""Table contracts: a pyarrow schema + a name + a version, checked on write and on read.

Every Parquet file ragvid writes carries ``ragvid.table``, ``ragvid.schema_version`` and
(for vector tables) ``ragvid.dim`` / ``ragvid.encoder`` in its metadata, plus the JSON of the
config that produced it. Reading a file written under another version, dimension or encoder
fails with a :class:`SchemaMismatchError` that names the file, what differs and what to do.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

META_TABLE = b"ragvid.table"
META_VERSION = b"ragvid.schema_version"
META_DIM = b"ragvid.dim"
META_ENCODER = b"ragvid.encoder"
META_CONFIG = b"ragvid.config"


class SchemaMismatchError(ValueError):
    """A table does not match the contract it is read or written under."""


@dataclass(frozen=True)
class TableSpec:
    """A named, versioned table contract.

    ``build(dim)`` returns the pyarrow schema (vector tables depend on the embedding
    dimension). ``extra_columns_allowed`` lets tables such as the manifest carry the
    corpus's own additional columns (like video2dataset's ``--save_additional_columns``).
    """

    name: str
    version: int
    build: Callable[[int | None], pa.Schema]
    has_dim: bool = False
    extra_columns_allowed: bool = False
    doc: str = ""
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def schema(self, dim: int | None = None) -> pa.Schema:
        if self.has_dim and dim is None:
            raise ValueError(f"table '{self.name}' has vector columns: pass dim=<embedding dim>")
        key = dim if self.has_dim else None
        if key not in self._cache:
            self._cache[key] = self.build(key)
        return self._cache[key]

    def metadata(
        self,
        dim: int | None = None,
        encoder: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> dict[bytes, bytes]:
        meta = {META_TABLE: self.name.encode(), META_VERSION: str(self.version).encode()}
        if dim is not None:
            meta[META_DIM] = str(dim).encode()
        if encoder is not None:
            meta[META_ENCODER] = encoder.encode()
        if config is not None:
            meta[META_CONFIG] = json.dumps(config, sort_keys=True, default=str).encode()
        return meta

    def conform(
        self,
        table: pa.Table,
        dim: int | None = None,
        where: str = "table",
        keep_float32: bool = False,
    ) -> pa.Table:
        """Check ``table`` against the contract and return it in the contract's column order
        and types (safe casts only, e.g. float32 vectors → float16 storage is *not* implicit).

        ``keep_float32`` (readers): a float16 vector column stored as float32 (``EmbedConfig.
        storage_dtype="float32"``, the layout every Parquet reader reads) is returned as
        stored, not rounded to float16.
        """
        schema = self.schema(dim)
        missing = [f.name for f in schema if f.name not in table.column_names]
        if missing:
            raise SchemaMismatchError(
                f"{where}: table '{self.name}' v{self.version} is missing column(s) {missing}; "
                f"has {table.column_names}"
            )
        extras = [c for c in table.column_names if c not in schema.names]
        if extras and not self.extra_columns_allowed:
            raise SchemaMismatchError(
                f"{where}: table '{self.name}' does not allow extra column(s) {extras}"
            )
        columns, fields = [], []
        for f in schema:
            col = table.column(f.name)
            if keep_float32 and col.type.equals(float32_variant(f.type)):
                f = pa.field(f.name, col.type, nullable=f.nullable)
            if not col.type.equals(f.type):
                try:
                    col = col.cast(f.type, safe=True)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise SchemaMismatchError(
                        f"{where}: column '{f.name}' of table '{self.name}' has type {col.type}, "
                        f"expected {f.type} ({exc})"
                    ) from exc
            if not f.nullable and col.null_count:
                raise SchemaMismatchError(
                    f"{where}: column '{f.name}' of table '{self.name}' has {col.null_count} null "
                    "value(s) but the contract forbids nulls"
                )
            columns.append(col)
            fields.append(f)
        for name in extras:
            columns.append(table.column(name))
            fields.append(table.schema.field(name))
        return pa.Table.from_arrays(columns, schema=pa.schema(fields))

    def check_metadata(
        self,
        meta: Mapping[bytes, bytes] | None,
        where: str,
        dim: int | None = None,
        encoder: str | None = None,
    ) -> None:
        """Raise if file metadata names another table, version, dimension or encoder."""
        meta = meta or {}
        name = meta.get(META_TABLE, b"").decode() or None
        if name != self.name:
            raise SchemaMismatchError(
                f"{where}: expected a '{self.name}' table but the file "
                + (f"is a '{name}' table" if name else "has no ragvid table metadata")
                + " — point the command at the right file or rebuild it with ragvid."
            )
        version = int(meta.get(META_VERSION, b"0").decode() or 0)
        if version != self.version:
            raise SchemaMismatchError(
                f"{where}: '{self.name}' table written with schema version {version}, this ragvid "
                f"reads version {self.version} — rerun the stage that produced it (its parts are "
                "recomputed) or install the ragvid release that wrote it."
            )
        if dim is not None and META_DIM in meta:
            file_dim = int(meta[META_DIM].decode())
            if file_dim != dim:
                raise SchemaMismatchError(
                    f"{where}: '{self.name}' table has embedding dimension {file_dim}, expected "
                    f"{dim} — it was made with another encoder; use a matching encoder/index or "
                    "re-embed the corpus."
                )
        if encoder is not None and META_ENCODER in meta:
            file_enc = meta[META_ENCODER].decode()
            if file_enc != encoder:
                raise SchemaMismatchError(
                    f"{where}: '{self.name}' table was made with encoder '{file_enc}', expected "
                    f"'{encoder}' — mixing encoders gives meaningless similarities; re-embed or "
                    "select the matching index."
                )


def float32_variant(type_: pa.DataType) -> pa.DataType:
    """``type_`` with every float16 (at any list depth) widened to float32."""
    if pa.types.is_float16(type_):
        return pa.float32()
    if pa.types.is_fixed_size_list(type_):
        item = type_.value_field
        return pa.list_(item.with_type(float32_variant(item.type)), type_.list_size)
    if pa.types.is_list(type_):
        item = type_.value_field
        return pa.list_(item.with_type(float32_variant(item.type)))
    return type_


def file_dim(meta: Mapping[bytes, bytes] | None) -> int | None:
    """The embedding dimension recorded in a file's metadata, if any."""
    if meta and META_DIM in meta:
        return int(meta[META_DIM].decode())
    return None


def file_config(meta: Mapping[bytes, bytes] | None) -> dict[str, Any]:
    """The producing config recorded in a file's metadata ({} if none)."""
    if meta and META_CONFIG in meta:
        return json.loads(meta[META_CONFIG].decode())
    return {}
