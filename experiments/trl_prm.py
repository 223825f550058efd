"""TRL's PRMTrainer as this project's experiments run it (trl 1.13.0, the optional ``bench`` extra).

One place for what the throughput benchmark (``experiments/benchmarks/throughput.py``) and the real
model experiment (``experiments/real_text_prm/trl_baseline.py``) both need: the ``PRMConfig`` of a
run with the suite's training settings, and the trainer that takes the chains in the order of the
training file (written in the order the suite's sampler draws them, so both trainers see the same
batches). trl is imported inside the functions: without it, importing this module still works.
"""

from __future__ import annotations

from pathlib import Path


def prm_config(
    out_dir: str | Path,
    *,
    max_length: int,
    batch: int,
    steps: int,
    lr: float,
    seed: int,
    bf16: bool = False,
    use_cpu: bool = True,
    **overrides,
):
    """A ``trl.experimental.prm.PRMConfig`` with the suite's training settings: ``steps`` optimiser
    steps of ``batch`` chains at learning rate ``lr``, AdamW weight decay 0.01, gradient clipping
    1.0, cosine schedule, steps separated by a newline, ``max_length`` tokens, nothing saved or
    reported. ``overrides``: any other PRMConfig field (e.g. ``warmup_steps``, ``optim``)."""
    from trl.experimental.prm import PRMConfig

    settings = dict(
        output_dir=str(out_dir),
        max_length=max_length,
        step_separator="\n",
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=lr,
        weight_decay=0.01,
        max_grad_norm=1.0,
        lr_scheduler_type="cosine",
        gradient_checkpointing=False,
        bf16=bf16,
        fp16=False,
        use_cpu=use_cpu,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        seed=seed,
    )
    settings.update(overrides)
    return PRMConfig(**settings)


def prm_trainer_class(order: str = "file"):
    """``PRMTrainer`` itself (``order="default"``: TRL's seeded random sampler, as users run it) or a
    subclass that reads the training dataset in its own order (``order="file"``: a sequential
    sampler). Raises ValueError for another ``order``."""
    from torch.utils.data import SequentialSampler
    from trl.experimental.prm import PRMTrainer

    if order == "default":
        return PRMTrainer
    if order != "file":
        raise ValueError(f"order must be 'file' or 'default', got {order!r}")

    class FileOrderPRMTrainer(PRMTrainer):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    return FileOrderPRMTrainer
