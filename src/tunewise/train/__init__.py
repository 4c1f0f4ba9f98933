"""The training stage: LoRA and full fine-tuning with completion-only loss, checkpoints and resume.

Python API: `prepare(config)` checks and tokenizes the data (no weights loaded); `run(config, project)` trains
(or plans, with `dry_run=True`) and returns a `TrainResult` (or a `Plan`). `tunewise train` is a thin layer
over these.

    from tunewise.project import Project
    from tunewise.train import TrainConfig, run

    result = run(TrainConfig(data=["train.jsonl"], eval_data=["eval.jsonl"]), Project(Path(".")))
    # result.output: the adapter folder, loadable with PeftModel.from_pretrained(base_model, result.output)

Distributed training
--------------------
The same command runs under torchrun; each process takes a token-balanced share of every step's examples and
the gradients are summed with one all-reduce (gloo on CPU, NCCL on GPU), so N processes follow the loss
trajectory of one process with the same global batch. Only rank 0 writes the run directory.

    torchrun --standalone --nproc_per_node 2 -m tunewise train --data train.jsonl          # one machine
    torchrun --nnodes 2 --node_rank 0 --rdzv_endpoint HOST:29500 --nproc_per_node 8 \\
        -m tunewise train --data train.jsonl                                             # two machines

With `--strategy fsdp` each process keeps 1/N of the weights, gradients and optimizer state instead
(train/sharded.py), for models whose full fine-tuning does not fit one device.

Tested: 2 CPU processes with gloo equal 1 process, replicated (tests/test_train_ddp.py) and sharded
(tests/test_train_fsdp.py). Not tested here (no GPU): NCCL on GPUs, multi-node rendezvous.
"""

from tunewise.train.config import TrainConfig, auto_hyperparameters
from tunewise.train.loop import Plan, Prepared, TrainResult, prepare, run

__all__ = ["Plan", "Prepared", "TrainConfig", "TrainResult", "auto_hyperparameters", "prepare", "run"]
