"""
Data-parallel training across processes (``torchrun``) for every art_latent trainer.

Gradients are averaged across processes after each backward pass with one all-reduce per optimizer step, instead of
wrapping the model in ``DistributedDataParallel``: the methods register forward hooks on inner modules, step several
optimizers (AFD's discriminator) and differentiate through input gradients with ``create_graph=True`` (Deep Defense),
all of which DDP's reducer does not support or silently skips. The arithmetic is DDP's: the average of the per-process
gradients, weighted by the per-process batch sizes so that uneven shards still give the combined-batch gradient.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


class DistributedContext:
    """
    The process group a trainer runs in: rank, world size and the collective operations the training loop needs.

    :param group: The process group (default: the global one).
    """

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    @classmethod
    def resolve(cls, distributed: bool | str, device: torch.device) -> DistributedContext | None:
        """
        Decide whether to train data-parallel.

        :param distributed: ``"auto"``: yes when a process group with more than one process is initialised, or when
                            started by ``torchrun`` (``WORLD_SIZE`` > 1: the group is then initialised here, NCCL on
                            CUDA, gloo on CPU); ``True``: required (error when there is no group); ``False``: never.
        :param device: The classifier's device (picks the backend).
        :return: The context, or None for single-process training.
        """
        if distributed is False:
            return None
        if distributed not in (True, "auto"):
            raise ValueError(f"`distributed` must be 'auto', True or False, got {distributed!r}.")
        if not dist.is_available():
            if distributed is True:
                raise RuntimeError("distributed=True, but torch.distributed is not available in this build.")
            return None
        if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            backend = "nccl" if device.type == "cuda" else "gloo"
            logger.info("Initialising the %s process group from torchrun's environment.", backend)
            dist.init_process_group(backend)
        if not dist.is_initialized():
            if distributed is True:
                raise RuntimeError("distributed=True needs an initialised process group (start with torchrun).")
            return None
        context = cls()
        return context if context.world_size > 1 or distributed is True else None

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that writes checkpoints and shows progress bars)."""
        return self.rank == 0

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """
        This process's contiguous part of a global batch of indices (``tensor_split``: sizes differ by at most one).

        :param indices: The indices of one global batch.
        :return: This rank's indices.
        """
        return torch.tensor_split(indices, self.world_size)[self.rank]

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every process (what DDP does at construction)."""
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0, group=self.group)

    def average_gradients(self, parameters: Iterable[torch.nn.Parameter], local_count: int, total_count: int) -> None:
        """
        Replace every gradient by the combined-batch gradient: ``sum_r n_r g_r / sum_r n_r``, one all-reduce.

        Parameters without a gradient take part with zeros, so every process reduces the same flat buffer.

        :param parameters: The parameters an optimizer is about to step.
        :param local_count: Samples in this process's batch.
        :param total_count: Samples in the global batch.
        """
        params = [p for p in parameters if p.requires_grad]
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads]) * (local_count / total_count)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        offset = 0
        for param in params:
            size = param.numel()
            param.grad = flat[offset : offset + size].view_as(param).clone()
            offset += size

    def average_buffers(self, module: torch.nn.Module) -> None:
        """Average floating buffers (BatchNorm running statistics) across processes."""
        for buffer in module.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer.data, op=dist.ReduceOp.SUM, group=self.group)
                buffer.data /= self.world_size

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) `tensor` in place and return it."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        return tensor

    def barrier(self) -> None:
        """Wait for every process."""
        dist.barrier(group=self.group)


def convert_sync_batchnorm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """
    Replace BatchNorm layers by ``SyncBatchNorm`` (batch statistics over all processes) in place.

    :param model: The model.
    :param device: The model's device; PyTorch's SyncBatchNorm runs on GPUs only.
    :return: The converted model (its BatchNorm children replaced).
    """
    if device.type != "cuda":
        raise ValueError("sync_batchnorm=True needs CUDA: PyTorch's SyncBatchNorm does not run on CPU.")
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if converted is not model:
        raise ValueError("sync_batchnorm=True cannot convert a model that is itself a BatchNorm layer.")
    return model
