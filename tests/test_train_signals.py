"""`ragvid train` stopped by signals, in real processes: the first SIGINT/SIGTERM stops between
two micro-batches, drops the partial step, checkpoints the last completed step and exits
130/143 with a message; a second signal aborts at once; a rerun resumes and ends bit-identical
to an uninterrupted run. The progress shows the micro-batch of the step in progress, and a run
estimated over a day without a GPU is refused unless --yes.

Every run is a real ``ragvid train`` process (the CLI's ``app``, as ``python -m
ragvid.flows.cli`` runs it) forked by a zygote (a helper script, written below into a temporary
folder) that imports torch and the CLI once, so a run costs its training rather than a fresh
interpreter's imports (~10 s on a busy 2-core box; test_train.py starts fresh ones). The
zygote's console is told it is an interactive terminal, so a run draws the live progress bar
into its log; a run asked for ``tty=False`` sees a plain file (no live bar: plain lines).
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ragvid.model.trainer import format_duration, list_checkpoints
from ragvid.schemas import TRAIN_LOG, read_table

ZYGOTE = r"""
import json, os, sys, traceback

import torch

torch.set_num_threads(1)
from ragvid.flows.cli import app
import ragvid.model.pipeline_ragme, ragvid.model.presets, ragvid.model.train_data  # noqa
import ragvid.model.trainer  # noqa

print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    if "wait" in req:
        _, status = os.waitpid(req["wait"], 0)
        print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)
        continue
    pid = os.fork()
    if pid == 0:
        if not req["tty"]:  # a log file, as a scheduler gives: no live bar
            from ragvid.flows.cli.common import console

            os.environ.pop("TTY_COMPATIBLE")
            console.is_interactive = False
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        code = 0
        try:
            app(req["argv"], prog_name="ragvid")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:
            traceback.print_exc()
            code = 99
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
"""

PROGRESS = re.compile(r"step (\d+)/(\d+), micro-batch (\d+)/(\d+)")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _text(raw: str) -> str:
    """The log as words: no terminal control codes, line breaks or wrapping."""
    return " ".join(ANSI.sub("", raw).split())


class Run:
    def __init__(self, zygote: Zygote, pid: int, log: Path, run_dir: Path):
        self.zygote, self.pid, self.log, self.run_dir = zygote, pid, log, run_dir

    def output(self) -> str:
        return _text(self.log.read_text(errors="replace")) if self.log.is_file() else ""

    def wait_for(self, pattern: re.Pattern | str, timeout: float = 60) -> re.Match:
        pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if m := pattern.search(self.output()):
                return m
            time.sleep(0.01)
        pytest.fail(f"no {pattern.pattern!r} within {timeout} s:\n{self.output()[-3000:]}")

    def in_progress(self, step: int, timeout: float = 60) -> tuple[int, int]:
        """Wait until the live progress shows a micro-batch of step ``step`` (or later) in the
        first half of the step (the bar is redrawn 10 times a second: what it shows may be a
        micro-batch or two behind); returns (step, micro-batch) seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = PROGRESS.findall(self.output())
            if seen:
                s, _, micro, total = map(int, seen[-1])
                if s >= step and 1 < micro <= total // 2:
                    return s, micro
            time.sleep(0.005)
        pytest.fail(f"step {step} never seen in progress:\n{self.output()[-3000:]}")

    def wait(self, timeout: float = 60) -> int:
        return self.zygote.wait(self.pid, timeout)


class Zygote:
    def __init__(self, folder: Path):
        self.folder, self.n, self.args = folder, 0, []
        (folder / "zygote.py").write_text(ZYGOTE)
        self.stderr = open(folder / "zygote.err", "wb")  # noqa: SIM115 - closed in close()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
        env.update(TTY_COMPATIBLE="1", TTY_INTERACTIVE="1")  # the live bar, into the logs
        env.pop("RAGVID_FAULT", None)
        self.proc = subprocess.Popen(
            [sys.executable, str(folder / "zygote.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
        )
        self.ready = False  # it imports while the fixtures build the tables and the base

    def _reply(self, timeout: float) -> dict | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        assert line, f"the zygote died: {(self.folder / 'zygote.err').read_text()[-3000:]}"
        return json.loads(line)

    def _send(self, req: dict) -> None:
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()

    def start(self, run: str, *flags: str, tty: bool = True) -> Run:
        """``ragvid train --run <run> <common args> <flags>`` in a fresh child."""
        if not self.ready:
            assert self.proc.stdout.readline().strip() == b"ready", "the zygote did not start"
            self.ready = True
        self.n += 1
        log = self.folder / f"run-{self.n}.log"
        argv = ["train", "--run", run, *self.args, *flags]
        self._send({"argv": argv, "log": str(log), "tty": tty})
        reply = self._reply(60)
        assert reply is not None and "pid" in reply, reply
        return Run(self, reply["pid"], log, self.workspace / "runs" / run)

    def wait(self, pid: int, timeout: float) -> int:
        """The child's exit status; SIGKILLed (and the test failed) past ``timeout``."""
        self._send({"wait": pid})
        reply = self._reply(timeout)
        if reply is None:
            os.kill(pid, signal.SIGKILL)  # still our unreaped child: the pid cannot be reused
            self._reply(30)
            pytest.fail(f"run {pid} did not exit within {timeout} s")
        return reply["status"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.kill()
        self.proc.wait()
        self.stderr.close()


def _common(tiny_tables, tiny_base) -> list[str]:
    return [
        "--base",
        tiny_base,
        "--neighbours",
        "toy",
        "--corpus",
        "toy",
        "--encoder",
        "test:random-16",
        "-w",
        tiny_tables.root,
        "--preset",
        "tiny",
        "--model-preset",
        "tiny",
        "--checkpoint-every",
        "1000",  # only the stop writes a checkpoint before the end
    ]


@pytest.fixture(scope="module")
def _zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("train-signals"))
    yield z
    z.close()


@pytest.fixture(scope="module")
def zygote(_zygote, tiny_tables, tiny_base):
    _zygote.args = _common(tiny_tables, tiny_base)
    _zygote.workspace = Path(tiny_tables.root)
    return _zygote


# the paper's accumulation: 16 micro-batches of 1 a step (~1 s a step on the tiny recipe)
ACCUM16 = ("--effective-batch-size", "16", "--micro-batch-size", "1")


def _outputs(run_dir: Path) -> dict:
    log = read_table(run_dir / "train_log.parquet", TRAIN_LOG).drop_columns(["seconds"])
    return {"log": log.to_pylist(), "adapter": (run_dir / "adapter.safetensors").read_bytes()}


def _checkpointed(run: Run, step: int) -> None:
    """The one checkpoint on disk is of ``step``, complete, at that step's data position."""
    assert [p.name for p in list_checkpoints(run.run_dir)] == [f"step-{step:08d}"]
    assert not [p for p in (run.run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    state = json.loads((list_checkpoints(run.run_dir)[0] / "state.json").read_text())
    assert state["step"] == step and state["position"] == 16 * step
    assert [r["step"] for r in state["log"]] == list(range(1, step + 1))


def test_sigint_mid_step_checkpoints_the_last_completed_step_then_resumes_exactly(zygote):
    ref = zygote.start("sigint-ref", "--max-steps", "2", *ACCUM16)  # uninterrupted, meanwhile
    run = zygote.start("sigint", "--max-steps", "2", *ACCUM16)
    step, _ = run.in_progress(step=2)
    os.kill(run.pid, signal.SIGINT)
    sent = time.monotonic()
    assert run.wait(timeout=30) == 130, run.output()[-3000:]
    assert time.monotonic() - sent < 10
    out = run.output()
    assert "SIGINT received: stopping at the next micro-batch boundary" in out
    done = step - 1  # the signal landed in step `step`: it is dropped, not applied
    assert (
        f"stopped by SIGINT at step {done}, the partial step {step} dropped: checkpointed at "
        f"step {done}" in out
    ), out[-2000:]
    assert "rerun this command to resume" in out
    _checkpointed(run, done)

    again = zygote.start("sigint", "--max-steps", "2", *ACCUM16)
    assert again.wait() == 0, again.output()[-3000:]
    assert f"finished at step 2 (resumed from step {done})" in again.output()
    assert ref.wait() == 0, ref.output()[-3000:]
    ours, theirs = _outputs(run.run_dir), _outputs(ref.run_dir)
    assert [r["step"] for r in ours["log"]] == [1, 2]
    assert ours == theirs  # losses, lrs, sample counts and the weights file: bit for bit


def test_sigterm_stops_the_same_way_and_yes_skips_the_cpu_refusal(zygote):
    if torch.cuda.is_available():
        pytest.skip("the CPU refusal is off on a CUDA machine")
    run = zygote.start("sigterm", "--max-steps", "100000000", "--yes", *ACCUM16)
    step, _ = run.in_progress(step=2)
    os.kill(run.pid, signal.SIGTERM)
    sent = time.monotonic()
    assert run.wait(timeout=30) == 143, run.output()[-3000:]
    assert time.monotonic() - sent < 10
    out = run.output()
    assert re.search(
        r"timing: a micro-batch ≈ \S+ s .* a step \(16 micro-batches\), ≈ [\d.]+ "
        r"(days|years) to step 100000000 on CPU",
        out,
    ), out[-2000:]
    assert "error" not in out  # --yes: estimated, not refused
    assert "SIGTERM received" in out
    assert f"stopped by SIGTERM at step {step - 1}, the partial step {step} dropped" in out
    _checkpointed(run, step - 1)


def test_a_second_sigint_aborts_at_once(zygote):
    run = zygote.start(
        "abort", "--max-steps", "3", "--effective-batch-size", "48", "--micro-batch-size", "12"
    )
    run.wait_for(r"step 1/3, micro-batch 2/4")  # the warm-up micro-batch is behind
    os.kill(run.pid, signal.SIGINT)
    run.wait_for("SIGINT received", timeout=10)  # handled: the next one is the second
    os.kill(run.pid, signal.SIGINT)
    sent = time.monotonic()
    assert run.wait(timeout=30) == 130, run.output()[-3000:]
    assert time.monotonic() - sent < 5
    out = run.output()
    assert (
        "aborted by a second SIGINT after step 0: nothing saved now; no checkpoint on disk — "
        "rerun this command to start over" in out
    ), out[-2000:]
    assert "stopped by" not in out and "micro-batch 4/4" not in out
    assert list_checkpoints(run.run_dir) == []


def test_a_cpu_run_estimated_over_a_day_is_refused_without_yes(zygote):
    if torch.cuda.is_available():
        pytest.skip("the CPU refusal is off on a CUDA machine")
    run = zygote.start("refused", "--max-steps", "100000000", tty=False)
    assert run.wait() == 2, run.output()[-3000:]
    out = run.output()
    # no live bar in a file (only its final state, at the end), but plain progress lines
    assert "step 1/100000000, micro-batch 1/2" in out, out[-2000:]
    assert re.search(r"timing: a micro-batch ≈ .* a step \(2 micro-batches\)", out), out
    assert re.search(
        r"error: without a GPU this run would take ≈ [\d.]+ (days|years) \(.* a step, to step "
        r"100000000\) — train on a CUDA machine, use a smaller recipe \(--preset tiny, "
        r"--max-steps\), or pass --yes to train anyway",
        out,
    ), out[-2000:]
    assert list_checkpoints(run.run_dir) == []


def test_help_documents_the_exit_statuses_and_the_duration_format():
    from typer.testing import CliRunner

    from ragvid.flows.cli import app

    out = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert out.exit_code == 0
    text = " ".join(out.output.split())
    for words in (
        "130 (SIGINT)",
        "143 (SIGTERM)",
        "--yes",
        "micro-batch i/M",
        "--micro-batch-size",
    ):
        assert words in text, words
    assert [format_duration(s) for s in (0.04, 12, 3000, 6000, 3e5, 1e8)] == [
        "0.04 s",
        "12 s",
        "50 min",
        "1.7 h",
        "3.5 days",
        "3.2 years",
    ]
