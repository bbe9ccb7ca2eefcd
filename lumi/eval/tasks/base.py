"""What every zero-shot task shares: the item format, where examples come from, and how they are read.

A task turns raw records (from a local file in the benchmark's ORIGINAL release format, or from a ``datasets`` hub
dataset) into ``TaskItem``s: one ``(context, continuation)`` request per choice, scored by log-likelihood.
"""

from __future__ import annotations

import functools
import random
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal
from urllib.parse import urlparse

from pydantic import Field, model_validator

from lumi.core.config import ConfigModel
from lumi.core.errors import LumiError
from lumi.core.files import parse_json, parse_json_lines, read_text
from lumi.corpus.config import WorldSettings

TaskKind = Literal["multiple_choice", "greedy_continuation"]
RECORD_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError)


class TaskSource(ConfigModel):
    """Exactly one of: ``path`` (a local file in the original format; PIQA also ``labels_path``), ``dataset``
    (``datasets.load_dataset(dataset, dataset_config, split=split, data_files=data_files)`` -- a hub name such as
    ``google/boolq``, or a packaged builder such as ``json`` for local files), or ``world`` (the synthetic world of
    ``synthetic_cloze``: ``{"from": CORPUS_CONFIG}`` takes the synthetic source of the corpus config the model was
trained on, so the world is defined once)."""

    path: str | None = Field(None, description="local file in the original release layout (.jsonl or .json)")
    labels_path: str | None = Field(None, description="PIQA: the separate labels .lst file")
    dataset: str | None = Field(None, description="datasets.load_dataset name (hub) or builder (json)")
    dataset_config: str | None = Field(None, description="its config name")
    data_files: str | list[str] | None = Field(None, description="data_files for load_dataset")
    split: str | None = Field(None, description="dataset split; synthetic_cloze: heldout (default), validation "
                                                "or train")
    world: WorldSettings | None = Field(None, description="synthetic_cloze: {\"from\": corpus config} (its "
                                                          "synthetic source, the same world), or the world's "
                                                          "settings themselves")

    @model_validator(mode="after")
    def _one_origin(self) -> "TaskSource":
        origins = [name for name in ("path", "dataset", "world") if getattr(self, name) is not None]
        if len(origins) != 1:
            raise ValueError(f"give exactly one of path, dataset, world (got {origins or 'none'})")
        if self.labels_path is not None and self.path is None:
            raise ValueError("labels_path goes with path")
        return self

    def describe(self) -> str:
        if self.path is not None:
            return self.path + (f" + {self.labels_path}" if self.labels_path else "")
        if self.dataset is not None:
            parts = [self.dataset, self.dataset_config, f"split={self.split}" if self.split else None,
                     f"data_files={self.data_files}" if self.data_files else None]
            return " ".join(p for p in parts if p)
        return f"synthetic world seed={self.world.seed}"  # type: ignore[union-attr]


@dataclass(frozen=True)
class TaskItem:
    """One example: a request per choice; ``choice_lengths`` are lm-eval's acc_norm denominators (the length in
    characters of each choice string, without the leading space)."""

    item_id: str
    requests: tuple[tuple[str, str], ...]
    gold: int
    choice_lengths: tuple[int, ...]
    group: str | None = None  # a sub-category reported separately (the synthetic cloze's relation)

    def __post_init__(self) -> None:
        if not 0 <= self.gold < len(self.requests):
            raise ValueError(f"gold index {self.gold} out of range for {len(self.requests)} choices")


def choice_item(item_id: str, context: str, choices: list[str], gold: int, group: str | None = None,
                delimiter: str = " ") -> TaskItem:
    """The common shape: one context, continuations ``delimiter + choice`` (lm-eval's ``target_delimiter``)."""
    if not all(isinstance(choice, str) for choice in choices) or len(choices) < 2:
        raise ValueError(f"expected at least two string choices, got {choices!r}")
    return TaskItem(item_id, tuple((context, delimiter + choice) for choice in choices), gold,
                    tuple(len(choice) for choice in choices), group)


Record = dict[str, Any]


class SourceUnreadable(LumiError):
    """A task's examples could not be read at all (hub unreachable or offline, a file missing), as opposed to read but
    malformed: the message says which task, which source, and how to point it at a local copy."""

    def __init__(self, reason: str, task: str | None = None, fix: str | None = None):
        self.reason, self.task = reason, task
        where = f"task {task}: " if task else ""
        super().__init__(f"{where}{reason}" + (f"; {fix}" if fix else ""))


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def read_local_records(path: str | Path) -> list[Record]:
    """A ``.jsonl`` file (one object per line) or a ``.json`` array; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise SourceUnreadable(f"{path}: benchmark file not found")
    text = read_text(path, "benchmark file")
    if path.suffix == ".json":
        records = parse_json(text, path)
        if not isinstance(records, list):
            raise LumiError(f"{path}: expected a JSON array of examples")
    else:
        records = [record for _, record in parse_json_lines(text, path)]
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise LumiError(f"{path}: example {number} is {type(record).__name__}, expected a JSON object")
    return records


@functools.cache
def hub_unreachable() -> str | None:
    """Why the hub cannot be reached from here (None when it can, or under HF_HUB_OFFLINE, where ``datasets`` reads
    its cache without retrying). One quick connection instead of ``datasets``' ~30 s of retries and warnings."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return None
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=5).close()
    except OSError as exc:
        return f"the hub at {constants.ENDPOINT} cannot be reached ({exc.__class__.__name__}: {exc})"
    return None


def read_hub_records(source: TaskSource) -> list[Record]:
    if source.data_files is None and (unreachable := hub_unreachable()):
        raise SourceUnreadable(f"dataset {source.describe()} could not be loaded: {unreachable}; set "
                               "HF_HUB_OFFLINE=1 to read a cached copy")
    import datasets  # imported here: loading it costs a second and local-file tasks never need it

    try:
        dataset = datasets.load_dataset(source.dataset, source.dataset_config, split=source.split,
                                        data_files=source.data_files)
    except Exception as exc:  # datasets raises many unrelated types (connection, file, schema, builder errors)
        raise SourceUnreadable(f"dataset {source.describe()} could not be loaded ({one_line(exc)})") from None
    if not isinstance(dataset, datasets.Dataset):
        raise LumiError(f"dataset {source.describe()}: name a split (have {sorted(dataset)})")
    return [dict(row) for row in dataset]


def read_records(source: TaskSource) -> list[Record]:
    if source.world is not None:
        raise LumiError("a synthetic world is only a source for synthetic_cloze")
    return read_local_records(source.path) if source.path is not None else read_hub_records(source)


@dataclass(frozen=True)
class Task:
    """A benchmark: how to read its records, how one record becomes an item, and where it lives on the hub."""

    name: str
    kind: TaskKind
    metrics: tuple[str, ...]
    default_source: TaskSource
    parse: Callable[[Record, int], TaskItem]
    read: Callable[[TaskSource], list[Record]] = field(default=read_records)
    local_fields: tuple[str, ...] = ("path",)  # what a local copy in the original release layout sets

    def local_source_hint(self, config_key: str) -> str:
        """How to point this task at a local copy: a ``--set`` of ``config_key`` (e.g. ``tasks.0.source``)."""
        fields = ", ".join(f'"{name}": "FILE"' for name in self.local_fields)
        return f"to read a local copy in the original release layout instead: --set '{config_key}={{{fields}}}'"

    def load(self, source: TaskSource | None = None, config_key: str = "source") -> list[TaskItem]:
        """The task's items from ``source`` (default: its hub set); ``config_key`` is where the source is set in
        the config, for the message that says how to point an unreadable source at a local file."""
        source = source or self.default_source
        try:
            records = self.read(source)
        except SourceUnreadable as exc:
            raise SourceUnreadable(exc.reason, self.name, self.local_source_hint(config_key)) from None
        if not records:
            raise LumiError(f"task {self.name}: {source.describe()} holds no examples")
        items = []
        for index, record in enumerate(records):
            try:
                items.append(self.parse(record, index))
            except RECORD_ERRORS as exc:
                raise LumiError(f"task {self.name}: {source.describe()}: example {index + 1} is not in the "
                                f"{self.name} format ({type(exc).__name__}: {exc})") from None
        return items


def subsample(items: list[TaskItem], max_samples: int | None, seed: int) -> list[TaskItem]:
    """A seeded subset of ``max_samples`` items, kept in file order (all items when ``max_samples`` is None)."""
    if max_samples is None or max_samples >= len(items):
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), max_samples))
    return [items[i] for i in keep]
