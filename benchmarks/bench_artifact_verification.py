"""What the one verified way into a model (``lumi.loading``) costs stages 70-100: ``open_model_dir`` (config,
``checksums.json``: size and sha256 of every file) against the whole ``load_model`` it precedes, for a model dir and
for a LoRA adapter on it (the adapter's base verified and hashed too), plus the data checks of stage 60's rows
(``read_sft_split``: shapes, mask, id range, targets) against reading them.

    .venv/bin/python benchmarks/bench_artifact_verification.py --model tiny --rows 20000

Prints seconds and the verification's share of each load; the model's weights are random (what is measured is
reading and hashing bytes, not what they hold). Page cache warm: the figures are CPU cost, not the disk's.

``--stages``: the share of verification in whole stages -- sft, dpo, evaluate and the server's start
(``load_for_serving``) -- run in this process on the demo pipeline at a reduced size (the demo's configs with
``--documents`` synthetic documents, the micro model pretrained for ``--pretrain-steps`` steps, a few SFT/DPO
steps). Every verification function of ``lumi.formats`` (model dir, checksums, tokenizer identity and integrity,
data files, ids and masks, lineage, fingerprints) is wrapped with a timer that counts only its outermost call, so
nested checks are not counted twice; the share is that time over the stage's wall time, both from the same run.

    .venv/bin/python benchmarks/bench_artifact_verification.py --stages --documents 2000
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


class VerificationTimer:
    """Wraps the verification functions in every loaded ``lumi`` module that binds them; counts outermost calls."""

    def __init__(self) -> None:
        from lumi.formats import adapter, finetune_data, lineage, model_dir, packed, tokenizer

        self.functions = [model_dir.open_model_dir, model_dir.verify_checksums, model_dir.tokenizer_identity,
                          tokenizer.check_tokenizer_integrity, finetune_data.verify_data_files,
                          finetune_data.check_ids, finetune_data.check_mask, lineage.artifact_worlds,
                          lineage.require_same_world, adapter.base_fingerprint, adapter.adapter_fingerprint,
                          packed.check_token_ids, packed.check_packed_tokenizer]
        self.seconds, self.depth = 0.0, 0
        wrappers = {function: self.wrap(function) for function in self.functions}
        for name, module in list(sys.modules.items()):
            if name.split(".")[0] != "lumi" or module is None:
                continue
            for attribute, value in list(vars(module).items()):
                if callable(value) and value in wrappers:
                    setattr(module, attribute, wrappers[value])

    def wrap(self, function):
        def timed(*args, **kwargs):
            self.depth += 1
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.depth -= 1
                if self.depth == 0:
                    self.seconds += time.perf_counter() - start
        return timed

    def measure(self, label: str, work) -> tuple[str, float, float]:
        self.seconds = 0.0
        start = time.perf_counter()
        work()
        return label, time.perf_counter() - start, self.seconds


def stage_shares(args: argparse.Namespace) -> None:
    import importlib

    from lumi.cli import VERBS, main as lumi_main
    from lumi.serve.checkpoint import load_for_serving

    for module, _ in VERBS.values():  # every stage's bindings exist before the timer wraps them
        importlib.import_module(module)
    timer = VerificationTimer()

    def lumi(*argv: str) -> None:
        status = lumi_main(list(argv))
        if status != 0:
            raise SystemExit(f"lumi {argv[0]} exited {status}")

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        seed = ["--set", f"sources.0.documents={args.documents}"]
        lumi("corpus", "--config", "config/demo/corpus.json", *seed, "--output-dir", str(out / "corpus"))
        lumi("tokenizer", "--config", "config/demo/tokenizer.json", "--corpus-dir", str(out / "corpus"),
             "--output-dir", str(out / "tokenizer"))
        lumi("pack", "--config", "config/demo/packing.json", "--corpus-dir", str(out / "corpus"), "--tokenizer-dir",
             str(out / "tokenizer"), "--output-dir", str(out / "packed"))
        lumi("pretrain", "--config", "config/demo/pretrain.json", "--tokenizer-dir", str(out / "tokenizer"),
             "--data-dirs", str(out / "packed"), "--output-dir", str(out / "checkpoints"), "--max-steps",
             str(args.pretrain_steps), "--set", "eval_interval=1000", "--set", "compile=false")
        base = out / "checkpoints" / "demo" / "final"
        lumi("sft-corpus", "--config", "config/sft/datasets/demo.json", "--tokenizer-dir", str(base),
             "--output-dir", str(out / "sft_data"))
        rows = [timer.measure("sft (full, micro)", lambda: lumi(
            "sft", "--config", "config/sft/training/demo.json", "--model-path", str(base), "--data-dir",
            str(out / "sft_data"), "--output-dir", str(out / "sft"), "--max-steps", str(args.finetune_steps),
            "--set", "eval_interval=1000", "--set", "compile=false"))]
        sft = out / "sft" / "demo" / "final"
        lumi("dpo-corpus", "--config", "config/dpo/datasets/demo.json", "--tokenizer-dir", str(sft),
             "--output-dir", str(out / "dpo_data"))
        rows.append(timer.measure("dpo (full, micro)", lambda: lumi(
            "dpo", "--config", "config/dpo/training/demo.json", "--model-path", str(sft), "--data-dir",
            str(out / "dpo_data"), "--output-dir", str(out / "dpo"), "--max-steps", str(args.finetune_steps),
            "--set", "eval_interval=1000", "--set", "compile=false")))
        rows.append(timer.measure("evaluate (sft_demo.json, --max-samples 20)", lambda: lumi(
            "evaluate", "--config", "config/evaluation/sft_demo.json", "--model-path", str(sft),
            "--set", f"sft_loss.0.sft_dir={out / 'sft_data'}", "--max-samples", "20", "--device", "cpu",
            "--output-dir", str(out / "evaluation"))))
        rows.append(timer.measure("serve start (load_for_serving)", lambda: load_for_serving(
            out / "dpo" / "demo" / "final", device="cpu")))
    print(f"| stage | wall s | verification s | share |\n|---|---|---|---|")
    for label, wall, verify in rows:
        print(f"| {label} | {wall:.2f} | {verify:.3f} | {verify / wall:.1%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="architecture name in config/architectures/")
    parser.add_argument("--rows", type=int, default=20000, help="SFT rows of 256 tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stages", action="store_true", help="the share of verification in whole stages instead")
    parser.add_argument("--documents", type=int, default=2000, help="--stages: synthetic documents in the corpus")
    parser.add_argument("--pretrain-steps", type=int, default=20, help="--stages: steps of the micro model")
    parser.add_argument("--finetune-steps", type=int, default=10, help="--stages: SFT and DPO steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.stages:
        stage_shares(args)
        return
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
