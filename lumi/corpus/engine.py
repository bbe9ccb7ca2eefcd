"""Running the stage-10 steps on a datatrove executor, and the resumable build directory.

The build directory is the output directory itself (or, when ``--force`` replaces a finished corpus, the sibling
``.NAME.rebuild`` that is swapped in at the end). It holds ``_work/run.json`` (config hash, start time) while it is
unfinished and ``manifest.json`` only once complete. A rerun with the same config resumes it: datatrove's
per-task completion markers (``logs/<stage>/completions``) skip the finished tasks. ``logs/`` keeps datatrove's
per-stage logs and stats next to the corpus.

Locally the four stages run one after another from this process; on Slurm they are submitted as dependent job
arrays and this process returns once they are queued; Ray runs them on the cluster ``ray.init()`` connects to.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, TextIO

from tqdm import tqdm

from lumi.core.errors import LumiError
from lumi.core.files import atomic_write_json, check_output_dir, output_path, read_json
from lumi.corpus.config import CorpusConfig, LocalSourceConfig
from lumi.corpus.report import config_sha256
from lumi.corpus.sources import local_paths
from lumi.corpus.steps import (CorpusStep, FinalizeCorpus, PlanCorpus, ScanSources, WriteShards, read_scan_stats,
                               work_path)
from lumi.formats.corpus import MANIFEST

log = logging.getLogger(__name__)


def input_identity(config: CorpusConfig) -> dict[str, list[int]]:
    """(size, mtime in ns) of every local input file: part of the resume key, so an input edited, replaced or
    added (a glob matching one more file) after the build started makes the rerun rebuild instead of resuming
    with the old content. Hashing the inputs would also catch a same-size edit within one mtime tick, at the
    price of reading every input twice; size + mtime is what make and rsync trust."""
    identity = {}
    for source in config.sources:
        if isinstance(source, LocalSourceConfig):
            for path in local_paths(source):
                stat = path.stat()
                identity[str(path)] = [stat.st_size, stat.st_mtime_ns]
    return identity


def _changed_inputs(previous: dict[str, list[int]], current: dict[str, list[int]]) -> list[str]:
    return sorted(set(previous) ^ set(current) | {p for p in set(previous) & set(current)
                                                    if previous[p] != current[p]})


def prepare_build_dir(output_dir: Path, force: bool, config: CorpusConfig) -> tuple[Path, bool]:
    """Return (build dir, whether it replaces ``output_dir`` at the end), resuming an unfinished build of the same
    config and inputs (an unfinished build of changed inputs is rebuilt, saying which changed). A finished corpus or
    any other non-empty directory is replaced only with ``force``."""
    final = output_path(output_dir)
    ours_unfinished = work_path(final, "run.json").is_file() and not (final / MANIFEST).exists()
    if not ours_unfinished:
        check_output_dir(final, force)
    occupied = final.is_dir() and any(final.iterdir()) and not ours_unfinished
    build = final.parent / f".{final.name}.rebuild" if occupied else final
    run_file = work_path(build, "run.json")
    digest = config_sha256(config)
    inputs = input_identity(config)
    if run_file.is_file():
        previous = read_json(run_file)
        changed = _changed_inputs(previous.get("inputs", {}), inputs)
        if previous.get("config_sha256") == digest and not changed:
            log.info("resuming the unfinished build in %s", build)
            return build, occupied
        if previous.get("config_sha256") != digest and not force:
            raise LumiError(f"{build}: holds an unfinished build of another config; pass --force to discard it")
        if changed:
            log.warning("inputs changed since the unfinished build in %s started (%s): rebuilding from scratch",
                        build, ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else ""))
        shutil.rmtree(build)
    build.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_file, {"config_sha256": digest, "inputs": inputs, "started": time.time()})
    return build, occupied


def stage_steps(config: CorpusConfig, build: Path) -> list[tuple[str, CorpusStep, int]]:
    """(stage name, step, tasks) in execution order."""
    tasks = config.executor.tasks
    return [("scan", ScanSources(config, str(build)), tasks),
            ("plan", PlanCorpus(config, str(build), tasks), 1),
            ("write", WriteShards(config, str(build)), tasks),
            ("finalize", FinalizeCorpus(config, str(build), tasks), 1)]


def make_executor(config: CorpusConfig, name: str, step: CorpusStep, tasks: int, logging_dir: Path, depends=None):
    executor = config.executor
    workers = min(executor.workers, tasks)
    if executor.type == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor([step], tasks=tasks, workers=workers, logging_dir=str(logging_dir))
    if executor.type == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        slurm = executor.slurm
        assert slurm is not None  # checked by ExecutorConfig
        return SlurmPipelineExecutor(
            [step], tasks=tasks, workers=workers, logging_dir=str(logging_dir),  # workers: jobs at once
            job_name=f"{slurm.job_name}-{name}", partition=slurm.partition, time=slurm.time,
            cpus_per_task=slurm.cpus_per_task, mem_per_cpu_gb=slurm.mem_per_cpu_gb,
            venv_path=slurm.venv_path or str(Path(sys.prefix) / "bin" / "activate"),
            sbatch_args=dict(slurm.sbatch_args), depends=depends)
    from datatrove.executor import RayPipelineExecutor

    return RayPipelineExecutor([step], tasks=tasks, workers=workers, logging_dir=str(logging_dir),
                               cpus_per_task=executor.ray.cpus_per_task, mem_per_cpu_gb=executor.ray.mem_per_cpu_gb,
                               depends=depends)


@contextlib.contextmanager
def datatrove_console_to(path: Path) -> Iterator[TextIO]:
    """Send what datatrove prints to the console into ``path``; yield a stream to the real console.

    datatrove logs every task to ``logs/<stage>/logs/`` and also, at INFO, to stderr: in this process through
    ``sys.stderr``, in worker processes through file descriptor 2 (inherited from the forkserver), so both are
    redirected. The console keeps the progress bar and our one-line errors; exceptions still propagate."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    # A stream on descriptor 2 itself, never closed: a logger that keeps it after the block writes to the console.
    descriptor_2 = os.fdopen(2, "w", encoding="utf-8", closefd=False)
    try:
        with open(path, "a", encoding="utf-8") as log_file, os.fdopen(os.dup(saved), "w") as console:
            os.dup2(log_file.fileno(), 2)
            try:
                with contextlib.redirect_stderr(descriptor_2):
                    yield console
            finally:
                # The console comes back whatever happens: a flush into a full disk must not keep the error that
                # follows (ours or a traceback) inside console.log.
                try:
                    with contextlib.suppress(OSError):
                        descriptor_2.flush()
                finally:
                    os.dup2(saved, 2)
    finally:
        os.close(saved)


@contextlib.contextmanager
def scan_progress(build: Path, tasks: int, stream: TextIO) -> Iterator[None]:
    """A progress bar (documents, docs/s, MB/s) fed by the scan tasks' progress files, which work across
    processes; polled from a thread while the executor runs."""
    stop = threading.Event()
    bar = tqdm(unit="doc", desc="corpus scan", dynamic_ncols=True, mininterval=1.0, file=stream)
    started = time.monotonic()

    def poll() -> None:
        while True:
            stopped = stop.wait(1.0)
            documents = num_bytes = 0
            for rank in range(tasks):
                with contextlib.suppress(LumiError, OSError):
                    progress = read_json(work_path(build, "progress", f"{rank:05d}.json"))
                    documents += progress["documents"]
                    num_bytes += progress["bytes"]
            bar.update(documents - bar.n)
            bar.set_postfix_str(f"{num_bytes / 1e6 / max(time.monotonic() - started, 1e-9):.2f} MB/s", refresh=True)
            if stopped:
                return

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()


def run_build(config: CorpusConfig, build: Path) -> None:
    """Run every stage. Local: in order, checking after the scan that some document survived the filters."""
    stages = stage_steps(config, build)
    if config.executor.type != "local":
        executor = None
        for name, step, tasks in stages:
            executor = make_executor(config, name, step, tasks, build / "logs" / name, depends=executor)
        executor.run()
        return
    for name, step, tasks in stages:
        executor = make_executor(config, name, step, tasks, build / "logs" / name)
        with datatrove_console_to(build / "logs" / "console.log") as console, \
                scan_progress(build, tasks, console) if name == "scan" else contextlib.nullcontext():
            executor.run()
        if name == "scan":
            stats = read_scan_stats(build, tasks)
            if sum(s["candidates"] for s in stats.values()) == 0:
                counts = ", ".join(f"{n}: read {s['read']}, dropped {sum(s['dropped'].values())}"
                                   for n, s in stats.items())
                raise LumiError(f"the corpus is empty: every document was filtered out or the inputs held none "
                                f"({counts})")

