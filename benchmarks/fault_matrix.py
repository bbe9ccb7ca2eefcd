"""The fault matrix of stages 60-100 (docs/RELIABILITY.md): every fault-injection case of the test suite that covers
them -- damaged, swapped or foreign model and adapter dirs for each reader (sft, dpo, merge-lora, evaluate,
serve/chat), damaged SFT and DPO data, edited tokenizers (fine-tuned checkpoints' tokenizer_meta.json included), a
derived merged copy of another adapter or damaged, artifacts of another world (a moved data dir included), a 5 MB
message, kills of ``--force`` runs at each save and SIGKILL + resume for SFT and DPO, full and LoRA -- run as pytest
cases, then counted per group: cases tried / held. A case holds when its test passes (the fault is refused in one
line, or the run recovers exactly); a skipped case (no real data samples) is counted as not tried, and named.

    .venv/bin/python benchmarks/fault_matrix.py            # prints the table; exit 1 unless every tried case held
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# (test file, substring of the test names, group shown in the table)
GROUPS = [
    ("tests/test_faults_finetune.py", r"flipped_byte_in_a_model", "model dir with checksums, flipped byte"),
    ("tests/test_faults_finetune.py", r"flipped_byte_in_an_adapter", "adapter with checksums, flipped byte"),
    ("tests/test_faults_finetune.py", r"damaged_model_without", "model dir damaged (no checksums)"),
    ("tests/test_faults_finetune.py", r"damaged_adapter", "adapter damaged"),
    ("tests/test_faults_finetune.py", r"base_changed", "adapter whose base changed (serve/chat)"),
    ("tests/test_faults_finetune.py", r"merges_again", "dpo's derived merged copy: other adapter, damaged"),
    ("tests/test_faults_finetune.py", r"flipped_byte_in_the_data", "SFT/DPO data arrays, flipped byte"),
    ("tests/test_faults_finetune.py", r"damaged_dpo_data", "DPO data damaged"),
    ("tests/test_faults_finetune.py", r"damaged_sft_data", "SFT data damaged or all-zero mask"),
    ("tests/test_faults_finetune.py", r"edited_checkpoint", "checkpoint with an edited tokenizer.json"),
    ("tests/test_faults_finetune.py", r"edited", "edited tokenizer (stages 60, 70, 90)"),
    ("tests/test_faults_finetune.py", r"merge_lora_refuses", "merge-lora onto its own adapter"),
    ("tests/test_faults_finetune.py", r"worlds_are_recorded", "world recorded; refused after its data dir moved"),
    ("tests/test_faults_finetune.py", r"record_their_world", "corpus, packed data record their world (moved)"),
    ("tests/test_faults_finetune.py", r"_world", "a model of another (or the same) synthetic world"),
    ("tests/test_faults_finetune.py", r"carries_tokenizer_meta", "SFT checkpoint tokenizer_meta.json (full, LoRA)"),
    ("tests/test_sft_corpus.py", r"5_mb", "a 5 MB message without spaces (memory)"),
    ("tests/test_dpo_corpus.py", r"megabyte", "a 1 MB prompt turn or answer (stage 85)"),
    ("tests/test_faults_finetune.py", r"second_corpus", "a second stage-60/85 run on one output"),
    ("tests/test_faults_finetune.py", r"wrong_typed", "evaluate --compare, wrong-typed earlier results"),
    ("tests/test_faults_training.py", r"force_run", "killed --force run: refused, resumed, forced"),
    ("tests/test_faults_training.py", r"missing_final", "killed --force run: a reader is told where it waits"),
    ("tests/test_sft_train.py", r"sigkill", "SFT SIGKILL + resume (full, LoRA)"),
    ("tests/test_dpo_train.py", r"sigkill", "DPO SIGKILL + resume (full, LoRA)"),
    ("tests/test_config_lineage.py", r"world", "config references of an edited copy"),
]


class Tally:
    """A pytest plugin: the outcome of every test's call phase, by node id."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            self.outcomes[report.nodeid] = report.outcome


def group_of(nodeid: str) -> str | None:
    path, _, name = nodeid.partition("::")
    for file, pattern, group in GROUPS:
        if path == file and pattern in name:
            return group
    return None


def main() -> int:
    files = sorted({file for file, _, _ in GROUPS})
    selection = " or ".join(sorted({pattern for _, pattern, _ in GROUPS}))
    tally = Tally()
    pytest.main(["-q", "-p", "no:cacheprovider", "-k", selection, *files], plugins=[tally])
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    skipped = []
    for nodeid, outcome in tally.outcomes.items():
        group = group_of(nodeid)
        if group is None:
            continue
        if outcome == "skipped":
            skipped.append(nodeid)
            continue
        counts[group][0] += 1
        counts[group][1] += outcome == "passed"
    width = max(len(group) for _, _, group in GROUPS)
    print(f"\n{'fault group':<{width}}  tried  held")
    for _, _, group in GROUPS:
        tried, held = counts.get(group, (0, 0))
        print(f"{group:<{width}}  {tried:>5}  {held:>4}")
    tried, held = sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())
    print(f"{'all':<{width}}  {tried:>5}  {held:>4}")
    for nodeid in skipped:
        print(f"not tried (skipped): {nodeid}")
    return 0 if tried and tried == held else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    sys.exit(main())
