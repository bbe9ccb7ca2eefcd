"""Where documents come from: one iterator per (source, task), so ``tasks`` workers together read each document
exactly once, whatever their number.

* local files: with at least as many files as tasks, task ``r`` reads files ``r, r+tasks, ...``; otherwise every
  task reads the files and keeps documents ``r, r+tasks, ...`` (so one big file still spreads over workers);
* hub datasets: ``datasets.load_dataset(..., streaming=True)`` split with ``split_dataset_by_node`` (by file when
  the file count divides evenly, else by example), the same policy as datatrove's HuggingFaceDatasetReader;
* the synthetic world: generated in every task, documents interleaved by index.

``check_source`` opens each source and reads its first document before any task starts, so a missing file or
column, or a dataset the hub cannot serve, fails at once with a message naming it instead of inside a worker.
"""

from __future__ import annotations

import glob
from itertools import islice
from pathlib import Path
from typing import Iterator

from lumi.core.errors import LumiError
from lumi.corpus.config import HubSourceConfig, LocalSourceConfig, SourceConfig, SyntheticSource
from lumi.corpus.readers import read_file

Document = tuple[str, "str | None"]  # (id, text); text None: undecodable, skipped and counted


def local_paths(source: LocalSourceConfig) -> list[Path]:
    paths: list[Path] = []
    for pattern in source.paths:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise LumiError(f"source '{source.name}': no file matches {pattern!r}")
        paths += [Path(p) for p in matches]
    return paths


def _interleave(documents: Iterator[Document], rank: int, world_size: int) -> Iterator[Document]:
    return islice(documents, rank, None, world_size)


def _iter_local(source: LocalSourceConfig, rank: int, world_size: int) -> Iterator[Document]:
    paths = local_paths(source)
    by_file = len(paths) >= world_size
    for path in paths[rank::world_size] if by_file else paths:
        documents = read_file(path, source.format, source.text_column, source.txt_split, source.txt_separator)
        yield from documents if by_file else _interleave(documents, rank, world_size)


def open_hub_stream(source: HubSourceConfig):
    """The streaming dataset; hub and file errors become one-line messages naming the dataset."""
    import datasets

    what = f"source '{source.name}': dataset '{source.dataset}'" + (f" ({source.subset})" if source.subset else "")
    try:
        return datasets.load_dataset(source.dataset, source.subset, split=source.split, streaming=True,
                                     revision=source.revision, data_files=source.data_files)
    except ConnectionError as exc:
        raise LumiError(f"{what} cannot be reached on the Hugging Face hub ({exc.__class__.__name__}: "
                        f"{str(exc).splitlines()[0]}); check the network, HF_HUB_OFFLINE and, for a gated "
                        "dataset, HF_TOKEN or `huggingface-cli login`") from None
    except FileNotFoundError as exc:
        raise LumiError(f"{what}: not found ({str(exc).splitlines()[0]})") from None
    except ValueError as exc:  # unknown split or subset
        raise LumiError(f"{what}: {str(exc).splitlines()[0]}") from None


def _iter_hub(source: HubSourceConfig, rank: int, world_size: int) -> Iterator[Document]:
    from datasets.distributed import split_dataset_by_node

    stream = open_hub_stream(source)
    if world_size > 1:
        stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
    for index, record in enumerate(stream):
        if source.text_column not in record:
            raise LumiError(f"source '{source.name}': dataset '{source.dataset}' has no column "
                            f"'{source.text_column}' (columns: {', '.join(sorted(record))})")
        text = record[source.text_column]
        doc_id = str(record[source.id_column]) if source.id_column else f"{source.name}:{rank}/{world_size}:{index}"
        yield doc_id, text if isinstance(text, str) else None


def _iter_synthetic(source: SyntheticSource, rank: int, world_size: int) -> Iterator[Document]:
    world = source.world()
    documents = ((f"{source.name}:{i}", text) for i, text in enumerate(world.documents(source.documents)))
    return _interleave(documents, rank, world_size)


def iter_source(source: SourceConfig, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
    if isinstance(source, LocalSourceConfig):
        return _iter_local(source, rank, world_size)
    if isinstance(source, HubSourceConfig):
        return _iter_hub(source, rank, world_size)
    return _iter_synthetic(source, rank, world_size)


def check_source(source: SourceConfig) -> None:
    """Fail now, with a clear message, if the source cannot be opened or its text column is missing."""
    if isinstance(source, LocalSourceConfig):
        for path in local_paths(source):
            next(iter(read_file(path, source.format, source.text_column, source.txt_split, source.txt_separator)),
                 None)
    elif isinstance(source, HubSourceConfig):
        next(_iter_hub(source, 0, 1), None)
