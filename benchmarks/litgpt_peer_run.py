"""One litgpt pretraining run for ``bench_litgpt.py``, run by the python of a scratch venv holding ``litgpt`` (never a
project dependency, so this file imports nothing of ``lumi``).

What of litgpt is used as-is: the model (``litgpt.model.GPT`` from a ``litgpt.Config``), its pretraining init
(``litgpt.pretrain.initialize_weights``, GPT-NeoX: std sqrt(2/5d), output projections 1/sqrt(d)/n_layer), its tied
embeddings (``wte.weight = lm_head.weight``, as ``litgpt pretrain`` ties them), its lr schedule
(``litgpt.pretrain.get_lr``: lr 0 at the first step, linear warmup, cosine to min_lr), its loss
(``litgpt.utils.chunked_cross_entropy``: every next token a target, BOS included, documents not masked), its
optimizer settings (``torch.optim.AdamW`` over ``model.parameters()``: every parameter decayed, as the
``litgpt pretrain`` default) and ``torch.compile(model)`` (``litgpt pretrain`` always compiles). The loop is
``litgpt.pretrain.fit``'s without Fabric, logging and litdata: the same rows of Lumi's packed ``train.bin``, read
straight from the file, each row's 256 tokens its input and their next tokens its targets (255 per row), drawn in a
random order per epoch from ``--seed``. At the end the weights are written in transformers' Llama layout with
``litgpt.scripts.convert_lit_checkpoint.copy_weights_llama``, so the benchmark scores them with Lumi's evaluator.
Prints one JSON line: tokens/s over the steps after the first ``--skip-steps`` (compilation excluded), peak RSS, and
litgpt's own causal loss on the first val rows (to check the conversion).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch
from lightning import Fabric
from litgpt import Config
from litgpt.model import GPT
from litgpt.pretrain import get_lr, initialize_weights
from litgpt.scripts.convert_lit_checkpoint import copy_weights_llama
from litgpt.utils import chunked_cross_entropy


def rows(path: Path, seq_len: int, dtype: str) -> np.ndarray:
    return np.memmap(path, dtype=np.dtype(dtype), mode="r").reshape(-1, seq_len)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packed", type=Path, required=True, help="Lumi's packed dir (train.bin, val.bin)")
    parser.add_argument("--dtype", required=True, help="token dtype of the .bin files (the packed manifest's)")
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--shape", type=json.loads, required=True,
                        help='{"n_layer", "n_embd", "n_head", "intermediate_size", "block_size", "rope_base", "norm_eps"}')
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--micro-batch", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--min-lr", type=float, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--compile", type=int, default=1, help="torch.compile the model (litgpt pretrain: always)")
    parser.add_argument("--skip-steps", type=int, default=10, help="untimed first steps")
    parser.add_argument("--output", type=Path, required=True, help="transformers-layout state dict written here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    shape = args.shape
    config = Config(name="micro-peer", block_size=shape["block_size"], vocab_size=args.vocab_size,
                    padded_vocab_size=args.vocab_size, n_layer=shape["n_layer"], n_embd=shape["n_embd"],
                    n_head=shape["n_head"], n_query_groups=shape["n_head"], rotary_percentage=1.0,
                    parallel_residual=False, bias=False, norm_class_name="RMSNorm", norm_eps=shape["norm_eps"],
                    mlp_class_name="LLaMAMLP", intermediate_size=shape["intermediate_size"],
                    rope_base=shape["rope_base"])
    fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
    fabric.seed_everything(args.seed)
    model = GPT(config)
    initialize_weights(fabric, model, n_layer=config.n_layer, n_embd=config.n_embd)
    model.transformer.wte.weight = model.lm_head.weight  # litgpt pretrain's tie_embeddings
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.95))
    step_model = torch.compile(model) if args.compile else model

    train = rows(args.packed / "train.bin", config.block_size, args.dtype)
    generator = np.random.default_rng(args.seed)
    order: list[int] = []
    timed_from = None
    for it in range(args.steps):
        if it == args.skip_steps:
            timed_from = time.perf_counter()
        while len(order) < args.micro_batch:
            order.extend(generator.permutation(len(train)).tolist())
        picked, order = order[:args.micro_batch], order[args.micro_batch:]
        batch = torch.from_numpy(train[sorted(picked)].astype(np.int64))
        for group in optimizer.param_groups:
            group["lr"] = get_lr(args.lr, it, args.warmup, args.steps, args.min_lr)
        logits = step_model(batch[:, :-1])
        loss = chunked_cross_entropy(logits, batch[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad()
    seconds = time.perf_counter() - timed_from
    tokens = (args.steps - args.skip_steps) * args.micro_batch * config.block_size

    model.eval()
    val = torch.from_numpy(rows(args.packed / "val.bin", config.block_size, args.dtype)[:8].astype(np.int64))
    with torch.no_grad():
        check_loss = float(chunked_cross_entropy(model(val[:, :-1]), val[:, 1:]))
    hf_state: dict[str, torch.Tensor] = {}
    copy_weights_llama(config, hf_state, model.state_dict())
    torch.save({name: tensor.clone() for name, tensor in hf_state.items()}, args.output)
    print(json.dumps({"parameters": parameters, "tok_per_s": tokens / seconds, "final_train_loss": float(loss.detach()),
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "check_causal_loss_all_targets": check_loss}))


if __name__ == "__main__":
    main()
