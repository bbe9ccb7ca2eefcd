"""What the one verified way into a model (``lumi.loading``) costs stages 70-100: ``open_model_dir`` (config,
``checksums.json``: size and sha256 of every file) against the whole ``load_model`` it precedes, for a model dir and
for a LoRA adapter on it (the adapter's base verified and hashed too), plus the data checks of stage 60's rows
(``read_sft_split``: shapes, mask, id range, targets) against reading them.

    .venv/bin/python benchmarks/bench_artifact_verification.py --model tiny --rows 20000

Prints seconds and the verification's share of each load; the model's weights are random (what is measured is
reading and hashing bytes, not what they hold). Page cache warm: the figures are CPU cost, not the disk's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lumi.formats import finetune_data  # noqa: E402
from lumi.formats.model_dir import open_model_dir, write_checksums  # noqa: E402
from lumi.loading import load_model  # noqa: E402
from lumi.lora import save_adapter, wrap_lora  # noqa: E402
from lumi.model import build_model, load_architecture  # noqa: E402


def best_of(repeats: int, function, *args, **kwargs) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return min(times)


def model_dirs(workdir: Path, architecture: str) -> tuple[Path, Path]:
    model = build_model(load_architecture(architecture))
    base = workdir / "model"
    model.save_pretrained(base)
    (base / "spm.model").write_bytes(b"\0" * 1024)  # stands in for the tokenizer files a model dir carries
    write_checksums(base)
    adapter = wrap_lora(model, 16, 32, 0.0, ["q_proj", "k_proj", "v_proj", "o_proj"])
    save_adapter(adapter, base, workdir / "adapter", base)
    write_checksums(workdir / "adapter")
    return base, workdir / "adapter"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="architecture name in config/architectures/")
    parser.add_argument("--rows", type=int, default=20000, help="SFT rows of 256 tokens")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        base, adapter = model_dirs(workdir, args.model)
        size = sum(p.stat().st_size for p in base.iterdir()) / 1e6
        for name, path, kind in (("model dir", base, "refuse"), ("LoRA adapter + base", adapter, "merge")):
            load_model(path, "bench", adapter=kind)  # warm the page cache
            verify = best_of(args.repeats, open_model_dir, path, "bench")
            whole = best_of(args.repeats, load_model, path, "bench", adapter=kind)
            print(f"{args.model} ({size:.0f} MB) {name}: open_model_dir {verify:.3f} s of load_model {whole:.3f} s "
                  f"({verify / whole:.0%})")
        rng = np.random.default_rng(0)
        tokens = rng.integers(0, 32000, size=(args.rows, 256), dtype=np.int32)
        mask = rng.integers(0, 2, size=(args.rows, 256), dtype=np.uint8)
        np.save(workdir / "train_tokens.npy", tokens)
        np.save(workdir / "train_mask.npy", mask)
        read = best_of(args.repeats, lambda: (np.load(workdir / "train_tokens.npy"),
                                              np.load(workdir / "train_mask.npy")))
        checked = best_of(args.repeats, finetune_data.read_sft_split, workdir, "train", 32000)
        print(f"{args.rows} SFT rows x 256 ({tokens.nbytes / 1e6:.0f} MB): np.load {read:.3f} s, verified read "
              f"{checked:.3f} s (checks {(checked - read) / checked:.0%} of it)")


if __name__ == "__main__":
    main()
