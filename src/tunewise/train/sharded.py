"""Sharded data parallel (`--strategy fsdp`): each of N processes keeps 1/N of the weights, gradients and
optimizer moments, through PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`), one unit per decoder layer
and one for the rest. FSDP reduce-scatters the gradients itself and averages them over the N processes (gloo
has no pre-scaled sum), while the loop divides each process's loss by the trained tokens of the whole step
(train/loop.py) and needs their sum: a sharded process divides by 1/N of that instead.

Under FSDP a forward pass is a collective: each unit all-gathers its weights first, so every process must run
the same number of forward and backward passes. tunewise balances a step's examples by tokens, which gives
processes different numbers of micro-batches (and of held-out micro-batches); `even_out` pads each process's
list to the longest with repeats whose loss counts zero. Weights and optimizer moments are sharded DTensors:
checkpoints, the best weights and the saved output gather the full tensors on every process (collectives
again) and the writer alone writes them; loading puts each process's shard back.

tunewise's CPU kernels patch the layers they run in (train/kernels.py); under FSDP the run is plain
transformers + PEFT (`kernels: off`), as it is on a GPU.
"""

from __future__ import annotations

from typing import Any

from tunewise.errors import TunewiseError


def check_strategy(strategy: str, method: str) -> None:
    """Refuse what sharding cannot do, before any weight is read."""
    if strategy == "fsdp" and method == "qlora":
        raise TunewiseError(
            "--strategy fsdp cannot shard a 4-bit (qlora) base: bitsandbytes' packed weights are not sharded",
            hint="use --strategy ddp with method qlora (a 7B base fits one 24 GB GPU), or method lora with fsdp",
        )


def shard(model: Any, device: str, world: int) -> None:
    """Wrap `model` in FSDP2 units in place: each decoder layer (transformers' `_no_split_modules`), then the
    whole (the embeddings, final norm and output head, tied or not, share the root unit)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device, (world,))
    no_split = set(getattr(_inner(model), "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in no_split]
    if not layers:
        raise TunewiseError(
            f"cannot find the decoder layers of {type(_inner(model)).__name__} to shard",
            hint="use --strategy ddp for this model",
        )
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def _inner(model: Any) -> Any:
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    base = getattr(model, "base_model", None)
    return getattr(base, "model", model) if base is not None and base is not model else model


def is_sharded(model: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


class Filler(list):
    """A repeat of a real micro-batch that keeps a process in step with the others: its loss counts zero."""


def even_out(groups: list[list[int]], all_groups: list[list[list[int]]]) -> list[list[int]]:
    """This process's `groups` padded with `Filler`s to the longest list of any process (`all_groups`, one list
    per process), so that every process runs the same number of forward and backward passes.

    >>> even_out([[3]], [[[1, 2], [4]], [[3]]])
    [[3], [3]]
    >>> [type(g).__name__ for g in even_out([], [[[1, 2]], []])]
    ['Filler']
    """
    longest = max(len(g) for g in all_groups)
    first = groups[0] if groups else next(g[0] for g in all_groups if g)
    return list(groups) + [Filler(first) for _ in range(longest - len(groups))]


def scalar(value: Any) -> float:
    """A 0-d tensor's value; a sharded one (a DTensor, e.g. the gradient norm) is gathered first."""
    from torch.distributed.tensor import DTensor

    return (value.full_tensor() if isinstance(value, DTensor) else value).item()


def full_tensors(named: list[tuple[str, Any]]) -> dict[str, Any]:
    """Full, detached CPU copies of `named` tensors: a sharded one is all-gathered (every process must call)."""
    from torch.distributed.tensor import DTensor

    full = {}
    for name, tensor in named:
        value = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
        full[name] = value.detach().to("cpu", copy=True).contiguous()
    return full


def copy_into(target: Any, value: Any) -> None:
    """Copy a full tensor into `target`, keeping only this process's shard where `target` is sharded."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(target, DTensor):
        # Every process read the same file: each takes its own shard, nothing is sent.
        value = distribute_tensor(
            value.to(target.device), target.device_mesh, target.placements, src_data_rank=None
        )
    target.copy_(value)


def optimizer_state(model: Any, optimizer: Any) -> dict[str, Any]:
    """The optimizer's full state, keyed by parameter name, in CPU memory on rank 0 (the writer; the others get
    an empty dict). Every process must call."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, optimizer, options=options)


def load_optimizer_state(model: Any, optimizer: Any, state: dict[str, Any]) -> None:
    """Put a full, name-keyed optimizer state back, each process keeping its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def model_state(model: Any) -> dict[str, Any]:
    """The whole model's full state dict, for saving it (every process must call)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
