"""One training run of an objective in this process group: what ``lumi pretrain``, ``sft``, ``dpo`` and ``grpo``
share."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from lumi.train.config import TrainerConfig
from lumi.train.distributed import close_process_group, init_process_group_from_env
from lumi.train.objectives.base import Objective
from lumi.train.trainer import Trainer


def fit_objective(config: TrainerConfig, make_objective: Callable[[int, int], Objective], output_dir: Path,
                  resume: str | None, force: bool,
                  after: Callable[[Trainer], None] | None = None) -> int:
    """Build the objective for this rank (``make_objective(rank, world_size)``), train it to its step budget (a
    finished run says so and does nothing), then run ``after`` on rank 0 when training succeeded."""
    process = init_process_group_from_env()
    try:
        if not process.is_main:
            logging.getLogger().setLevel(logging.WARNING)
        objective = make_objective(process.rank, process.world_size)
        trainer = Trainer(config, objective, output_dir, resume=resume, force=force, rank=process.rank,
                          world_size=process.world_size, device=process.device)
        if trainer.step >= trainer.total_steps:
            if process.is_main:
                print(f"{trainer.run_dir}: already trained {trainer.step} of {trainer.total_steps} steps; "
                      "nothing to do")
            return 0
        status = trainer.fit()
        if status == 0 and process.is_main and after is not None:
            after(trainer)
        return status
    finally:
        close_process_group()
