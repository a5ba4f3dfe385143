"""Manifest rows from corpus inputs: layout detection, per-file readers, row validation.

Plain functions, no engine, in three modules — :mod:`.layouts` (detect + plan),
:mod:`.readers` (file → records), :mod:`.validate` (records → rows / rejects); this module
gathers their public names. The Beam adapter (:mod:`.beam`) only wires them together,
and anything else (a Ray job, a test) can call them directly. Supported layouts:

* ``webvid`` — WebVid ``results_*.csv`` partitions (a file or a folder):
  ``videoid, contentUrl, duration, page_dir, name``; ``contentUrl`` may be a URL or a path
  relative to the CSV's folder.
* ``video2dataset`` — a video2dataset output folder: ``NNNNN.parquet`` shards (``key``,
  ``caption``, ``url``, ``status``, …) with the videos in ``NNNNN.tar`` (webdataset:
  ``<key>.mp4`` + ``<key>.txt``/``.json``) or ``NNNNN/<key>.mp4`` (files format). Tar members
  are read in place, never extracted: the manifest ``uri`` is ``tar://<key>.mp4::<shard.tar>``
  (fsspec's chaining form, see :mod:`.layouts`). Without a parquet, the tar's samples are the
  rows.
* ``folder`` — video files plus a captions ``*.csv`` or ``*.jsonl`` (id/caption/file columns
  detected by name, or set in ``ManifestConfig``); without a file column the video is
  ``<id>.<ext>`` in the folder (or its ``videos/``).

``source_row`` is 1-based (0: the whole file, for a file that cannot be read at all): the
line where a CSV record starts (the header is line 1), the line of a JSONL record, the row of
a parquet shard, the sample of a tar.
"""

from __future__ import annotations

from ragvid.pipelines.corpus.layouts import (  # noqa: F401
    CANDIDATES,
    REQUIRED_WEBVID,
    ROLES,
    VIDEO_EXTS,
    InputFile,
    InputPlan,
    detect_layout,
    plan_inputs,
)
from ragvid.pipelines.corpus.readers import (  # noqa: F401
    read_records,
)
from ragvid.pipelines.corpus.validate import (  # noqa: F401
    dedup_group,
    manifest_table,
    parse_duration,
    rejects_table,
    shard_of,
    validate_record,
)
