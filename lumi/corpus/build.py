"""Build (or resume building) a corpus directory from a checked config: stage 10's whole run, below its command line
(``lumi/stages/corpus.py``), so tests and benchmarks build a corpus without going through a stage module."""

from __future__ import annotations

import shutil
from pathlib import Path

from lumi.core.errors import LumiError
from lumi.core.files import OutputClaim, storage_error
from lumi.corpus.config import CorpusConfig, LocalSourceConfig
from lumi.corpus.engine import prepare_build_dir, run_build
from lumi.corpus.sources import check_source
from lumi.formats.corpus import read_manifest


def absolute_paths(config: CorpusConfig) -> CorpusConfig:
    """Local paths made absolute, so tasks running elsewhere (other processes, cluster nodes) find the files."""
    sources = [s.model_copy(update={"paths": [str(Path(p).absolute()) for p in s.paths]})
               if isinstance(s, LocalSourceConfig) else s for s in config.sources]
    return config.model_copy(update={"sources": sources})


def checked_sources(config: CorpusConfig) -> CorpusConfig:
    """``absolute_paths(config)``, then ``check_source`` on each source so a bad one fails before any task starts."""
    config = absolute_paths(config)
    for source in config.sources:
        check_source(source)
    return config


def build_corpus(config: CorpusConfig, output_dir: Path, force: bool = False) -> dict | None:
    """Build (or resume building) the corpus at ``output_dir``; return its manifest, or None when the stages
    were submitted to a cluster and finish there."""
    config = checked_sources(config)
    with OutputClaim(output_dir) as claim:  # the lock; the only copy moved back if a kill left it set aside
        final = claim.final
        build, replaces = prepare_build_dir(final, force, config)  # may refuse: nothing deleted before
        claim.go_ahead()
        if replaces and config.executor.type == "slurm":
            raise LumiError(f"{output_dir}: exists; on Slurm the build cannot replace it at the end, so remove it or "
                            "choose another --output-dir")
        try:
            run_build(config, build)
        except LumiError:
            shutil.rmtree(build, ignore_errors=True)  # a user error is not fixed by rerunning: nothing to resume
            raise
        except Exception as exc:
            # A full or read-only disk: the finished tasks are kept, so the rerun resumes once there is room.
            error = storage_error(exc, build)
            if error is None:
                raise
            raise LumiError(f"{error}; rerun the same command to resume") from exc
        if config.executor.type == "slurm":
            return None
        if replaces:
            claim.replace_with(build)
    return read_manifest(final)
