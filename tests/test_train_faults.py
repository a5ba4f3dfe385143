"""Fault campaign for training: real processes SIGKILLed at named fault points and at seeded
random times, each followed by a rerun that resumes; the final adapter files and train log are
bit-identical to an uninterrupted run's. Corrupt checkpoints and adapter weights are detected
by their checksums; a latents part without a valid marker is recomputed.

Every training run is a real process: a zygote (a helper script, written below into a temporary
folder) imports torch and the trainer once and forks one child per run, so a run costs its
training (~2 s) rather than a fresh interpreter's imports (~8 s). A child shares nothing with a
killed one but the files on disk; the zygote itself never trains or passes a fault point.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ragvid.model.adapter import ADAPTER_CONFIG, load_adapter
from ragvid.model.trainer import list_checkpoints
from ragvid.schemas import TRAIN_LOG, read_table
from ragvid.schemas.checksum import ChecksumMismatchError, FileRecord, verify_file

CONFIG = {"max_steps": 6, "checkpoint_every": 2, "keep_checkpoints": 2}
FINAL = ["step-00000004", "step-00000006"]  # the checkpoints an uninterrupted run keeps

ZYGOTE = r"""
import json, os, signal, sys, time

import torch

torch.set_num_threads(1)
from ragvid.model.presets import get_preset
from ragvid.model.train_data import load_training_set
from ragvid.model.trainer import train, train_preset


def child(req):
    fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.pop("RAGVID_FAULT", None)
    if req.get("fault"):
        os.environ["RAGVID_FAULT"] = req["fault"]
    try:
        cfg = train_preset("tiny").model_copy(update=req["config"])
        t = req["tables"]
        ds = load_training_set(
            t["neighbours"], t["embeddings"], manifest_dir=t["manifest"],
            num_frames=cfg.num_frames, height=cfg.height, width=cfg.width,
        )
        p = get_preset("tiny")
        res = train(req["run"], req["base"], ds, cfg, enhancer=p.enhancer, ragca=p.ragca)
        out = {"ok": True, "step": res.step, "resumed_from": res.resumed_from,
               "skipped": res.skipped_checkpoints}
    except Exception as exc:
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    with open(req["result"], "w") as fh:
        json.dump(out, fh)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        child(req)
    deadline = started + req["kill_after"] if req.get("kill_after") else None
    while True:  # the zygote kills its own child: its pid cannot be reused before the reap
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if deadline is not None and time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = None
        time.sleep(0.005)
    code = os.waitstatus_to_exitcode(status)
    print(json.dumps({"status": code, "seconds": time.monotonic() - started}), flush=True)
"""


class Zygote:
    def __init__(self, folder: Path):
        self.folder, self.n, self.common = folder, 0, {}
        script = folder / "zygote.py"
        script.write_text(ZYGOTE)
        self.stderr = open(folder / "zygote.err", "wb")  # noqa: SIM115 - closed in close()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("RAGVID_FAULT", None)
        self.proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
        )
        self.ready = False  # it imports while the fixtures build the tables and the base

    def _line(self) -> bytes:
        return self.proc.stdout.readline().strip()

    def _why(self) -> str:
        return (self.folder / "zygote.err").read_text(errors="replace")[-3000:]

    def run(
        self, run: Path, fault: str | None = None, kill_after: float | None = None
    ) -> tuple[int, dict | None, float, str]:
        """Train into ``run`` in a fresh child: (exit status, result or None, seconds, log)."""
        if not self.ready:
            assert self._line() == b"ready", self._why()
            self.ready = True
        self.n += 1
        req = {
            **self.common,
            "run": str(run),
            "config": CONFIG,
            "fault": fault,
            "kill_after": kill_after,
            "log": str(self.folder / f"child-{self.n}.log"),
            "result": str(self.folder / f"child-{self.n}.json"),
        }
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        line = self._line()
        assert line, f"the zygote died: {self._why()}"
        reply = json.loads(line)
        result = Path(req["result"])
        out = json.loads(result.read_text()) if result.is_file() else None
        log = Path(req["log"]).read_text(errors="replace")[-3000:]
        return reply["status"], out, reply["seconds"], log

    def finish(self, run: Path, **kw) -> dict:
        """A run that must complete."""
        status, out, _, log = self.run(run, **kw)
        assert status == 0 and out is not None and out["ok"], f"{out}\n{log}"
        return out

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.kill()  # nothing to flush: interpreter shutdown with torch takes seconds
        self.proc.wait()
        self.stderr.close()


@pytest.fixture(scope="module")
def _zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


@pytest.fixture(scope="module")
def zygote(_zygote, tiny_tables, tiny_base):
    _zygote.common = {
        "base": tiny_base,
        "tables": {
            "neighbours": tiny_tables.neighbours_dir,
            "embeddings": tiny_tables.embeddings_dir,
            "manifest": tiny_tables.manifest_dir,
        },
    }
    return _zygote


def _outputs(run: Path) -> dict:
    """What a finished run leaves that must not depend on kills (wall-clock seconds aside)."""
    log = read_table(run / "train_log.parquet", TRAIN_LOG)
    return {
        "adapter": (run / "adapter.safetensors").read_bytes(),
        "adapter_config": (run / ADAPTER_CONFIG).read_bytes(),
        "log": log.drop_columns(["seconds"]).to_pylist(),
        "checkpoints": [p.name for p in list_checkpoints(run)],
        "leftovers": sorted(p.name for p in (run / "checkpoints").iterdir() if p.name[0] == "."),
    }


@pytest.fixture(scope="module")
def reference(zygote, tmp_path_factory) -> dict:
    run = tmp_path_factory.mktemp("reference") / "run"
    status, out, seconds, log = zygote.run(run)
    assert status == 0 and out["ok"] and out["resumed_from"] is None, f"{out}\n{log}"
    ref = _outputs(run)
    assert [r["step"] for r in ref["log"]] == list(range(1, CONFIG["max_steps"] + 1))
    assert ref["checkpoints"] == FINAL and not ref["leftovers"]
    return {**ref, "run": run, "seconds": seconds}


def _assert_same(run: Path, reference: dict) -> None:
    got = _outputs(run)
    assert got["log"] == reference["log"]  # losses, lrs, sample counts: bit for bit
    assert got["adapter"] == reference["adapter"]  # the weights file, byte for byte
    assert got["adapter_config"] == reference["adapter_config"]  # incl. the weights' sha256
    assert got["checkpoints"] == FINAL and not got["leftovers"]
    for folder in list_checkpoints(run):  # every checkpoint left matches its records
        records = json.loads((folder / "state.json").read_text())["files"]
        assert set(records) >= {"adapter.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt"}
        for name, rec in records.items():
            verify_file(str(folder / name), FileRecord.from_json(rec), "checkpoint file")


@pytest.mark.parametrize(
    ("fault", "resumes_from"),
    [
        ("train:after-step:3", 2),  # mid-run, between checkpoints
        ("train:checkpoint:after-optimizer:1", None),  # inside the first checkpoint
        ("train:checkpoint:before-rename:2", 2),  # step 4 complete in its .tmp folder
        ("train:checkpoint:after-rename:3", 6),  # step 6 in place, the run's adapter not yet
        ("train:final-adapter:after-weights:3", 6),  # new weights beside the old record
    ],
)
def test_kill_at_a_fault_point_then_resume_matches_an_uninterrupted_run(
    zygote, reference, tmp_path, fault, resumes_from
):
    run = tmp_path / "run"
    status, out, _, log = zygote.run(run, fault=fault)
    assert status == -signal.SIGKILL and out is None, f"not killed at {fault}: {out}\n{log}"
    if fault.startswith("train:final-adapter"):  # the half-written adapter is detected
        with pytest.raises(ChecksumMismatchError, match=r"adapter\.safetensors: adapter weights"):
            load_adapter(run)
    again = zygote.finish(run)
    assert again["resumed_from"] == resumes_from and again["step"] == CONFIG["max_steps"]
    assert not again["skipped"]
    _assert_same(run, reference)


def test_kills_at_seeded_random_times_then_resume_match(zygote, reference, tmp_path):
    run, rng = tmp_path / "run", random.Random(20240612)
    statuses = []
    for lo, hi in [(0.1, 0.6), (0.05, 0.9)]:
        delay = rng.uniform(lo, hi) * reference["seconds"]
        status, out, _, log = zygote.run(run, kill_after=delay)
        assert status in (0, -signal.SIGKILL), log
        assert status != 0 or out["ok"], f"{out}\n{log}"
        statuses.append(status)
    assert -signal.SIGKILL in statuses, f"no kill landed before the run ended: {statuses}"
    zygote.finish(run)
    _assert_same(run, reference)


def _flip_byte(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x01  # same size: only the sha256 can tell
    path.write_bytes(bytes(data))


def test_corrupt_checkpoint_is_skipped_or_refused(zygote, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference["run"], run)
    _flip_byte(run / "checkpoints" / FINAL[-1] / "optimizer.pt")
    out = zygote.finish(run)
    assert out["resumed_from"] == 4, out  # the newest is skipped, the previous one used
    (why,) = out["skipped"]
    assert f"{FINAL[-1]} is corrupt" in why
    assert "optimizer.pt: checkpoint file does not match the record" in why
    _assert_same(run, reference)  # retrained 5–6 bit for bit; the corrupt folder replaced

    for name in FINAL:
        _flip_byte(run / "checkpoints" / name / "adapter.safetensors", at=0.9)
    status, out, _, log = zygote.run(run)
    assert status == 0 and not out["ok"], log
    assert out["error"].startswith("CorruptCheckpointError: no usable checkpoint in")
    assert "all 2 are corrupt" in out["error"] and "adapter.safetensors" in out["error"]
    assert f"delete {', '.join(FINAL)}" in out["error"] and "--no-resume" in out["error"]


def test_adapter_weights_are_verified_and_legacy_adapters_load(reference, tmp_path):
    good = tmp_path / "good"
    shutil.copytree(reference["run"], good, ignore=shutil.ignore_patterns("checkpoints"))
    cfg = json.loads((good / ADAPTER_CONFIG).read_text())
    assert cfg["weights"]["path"] == "adapter.safetensors" and len(cfg["weights"]["sha256"]) == 64
    state = load_adapter(good).state_dict()

    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    _flip_byte(bad / "adapter.safetensors", at=0.9)
    with pytest.raises(ChecksumMismatchError, match=rf"{bad}/adapter\.safetensors: adapter wei"):
        load_adapter(bad)

    del cfg["weights"]  # an adapter saved before records existed: loads, unchecked
    (good / ADAPTER_CONFIG).write_text(json.dumps(cfg))
    legacy = load_adapter(good).state_dict()
    assert all(torch.equal(legacy[k], state[k]) for k in state)


def test_latents_part_without_a_valid_marker_is_recomputed(
    tiny_tables, tiny_base, tmp_path, torch_one_thread
):
    from ragvid.model.train_data import encode_latents, load_training_set
    from ragvid.model.trainer import load_base
    from ragvid.schemas import MANIFEST, read_parts
    from ragvid.schemas.markers import IncompleteTableError, marker_uri

    vae = load_base(tiny_base).vae
    manifest = read_parts(tiny_tables.manifest_dir, MANIFEST)
    folder = tmp_path / "latents"
    part = folder / "part-00000.parquet"
    kw = dict(num_frames=4, height=32, width=32, vae_id="tiny")

    def load():
        return load_training_set(
            tiny_tables.neighbours_dir, tiny_tables.embeddings_dir, latents_uri=str(folder)
        )

    assert encode_latents(manifest, vae, str(part), **kw)["rows"] == 6
    made = part.read_bytes()
    assert encode_latents(manifest, vae, str(part), **kw) == {"skipped": True}
    assert len(load()) == 6

    Path(marker_uri(str(part))).unlink()  # as if killed between the part and its marker
    with pytest.raises(IncompleteTableError, match="no marker"):
        load()
    assert encode_latents(manifest, vae, str(part), **kw)["rows"] == 6  # recomputed
    assert part.read_bytes() == made and len(load()) == 6

    _flip_byte(part)  # same size: the marker's sha256 tells
    with pytest.raises(ChecksumMismatchError, match="part-00000.parquet"):
        load()
    assert encode_latents(manifest, vae, str(part), **kw)["rows"] == 6  # recomputed
    assert part.read_bytes() == made and len(load()) == 6
