"""Distributed training under torchrun: process-group set-up, per-rank data shards, reductions.

A plain process is the 1-process case: every function here works without a process group.
torchrun sets WORLD_SIZE / RANK / LOCAL_RANK (and the rendezvous); fastface adds nothing to it.
"""
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1


_joined_group = False    # this process joined a torchrun process group (setup)


def _env_int(name, default):
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an int (torchrun sets it), got {value!r}") from None


def setup(device=None):
    """Join the torchrun process group if this process was started by torchrun (WORLD_SIZE > 1), with NCCL on
    CUDA and gloo on CPUs; return DistInfo with this rank's device (cuda:LOCAL_RANK under torchrun).

    device: "cpu", "cuda", "cuda:N" or None (CUDA when available)."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    try:
        device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} was asked for but torch sees no CUDA device")
        if world > 1 or device.index is None:
            device = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        global _joined_group
        _joined_group = True
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def teardown():
    """Leave the process group together: a rank that destroys its gloo group while a peer still
    talks to it can abort the peer ("terminate called without an active exception")."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_process(code=0):
    """End the process with code. One that joined a torchrun group ends without interpreter finalisation
    (os._exit after flushing stdio): objects that outlive destroy_process_group (a DDP module holds its
    group) would be destroyed during finalisation, when gloo's threads can abort the process with SIGABRT
    ("terminate called without an active exception"). Plain processes exit normally."""
    if _joined_group:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)
    sys.exit(code)


def barrier():
    if dist.is_initialized():
        dist.barrier()


def mean_over_ranks(values: dict, device):
    """values {name: float} averaged over every rank (the 1-process values untouched)."""
    if not dist.is_initialized() or dist.get_world_size() == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return {k: v for k, v in zip(keys, t.tolist())}


def all_gather_objects(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] without a process group)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src=0):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def epoch_permutation(n, seed, epoch):
    """The data order of one epoch: a permutation of range(n) drawn from (seed, epoch) alone."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000003 + epoch))


class ShardedBatchSampler(torch.utils.data.Sampler):
    """Batches of one rank: epoch e draws one global permutation from (seed, e); global batch i is
    perm[i*G:(i+1)*G] with G = batch_size * world_size, and rank r takes its r-th slice of batch_size
    indices. Incomplete global batches are dropped, so every rank runs the same number of steps.

    set_epoch(e, start) selects the epoch and the first batch (resume mid-epoch without reading the
    skipped batches). permutation(n, seed, epoch) can be replaced (a trainer keeping an older order)."""

    def __init__(self, n, batch_size, rank=0, world_size=1, seed=0, permutation=epoch_permutation):
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.seed, self.permutation = seed, permutation
        self.global_batch = batch_size * world_size
        self.epoch, self.start = 0, 0

    def __len__(self):
        return self.n // self.global_batch

    def set_epoch(self, epoch, start=0):
        self.epoch, self.start = int(epoch), int(start)

    def __iter__(self):
        perm = self.permutation(self.n, self.seed, self.epoch)
        for i in range(self.start, len(self)):
            lo = i * self.global_batch + self.rank * self.batch_size
            yield perm[lo:lo + self.batch_size].tolist()


def shard_with_ids(n, rank=0, world_size=1):
    """The sample ids rank takes from range(n), padded as DistributedSampler pads (repeating the first ids)
    so every rank gets ceil(n / world_size); gather_unique drops the repeats."""
    per = -(-n // world_size)
    ids = list(range(n)) + list(range(per * world_size - n))
    return ids[rank::world_size]


def gather_unique(ids, outputs, n):
    """Outputs of every rank, each sample once, in id order: ids (m,) of this rank's rows of outputs
    (m, ...) (a tensor or dict of tensors). Every rank gets the result; a missing id raises."""
    parts = all_gather_objects((list(ids), _to_cpu(outputs)))
    seen, order, rows = set(), [], []
    for part_ids, part in parts:
        for j, i in enumerate(part_ids):
            if i not in seen:
                seen.add(i)
                order.append(i)
                rows.append((part, j))
    if len(seen) != n:
        raise RuntimeError(f"distributed evaluation lost samples: {n - len(seen)} of {n} missing")
    rank_of = sorted(range(len(order)), key=order.__getitem__)
    picked = [rows[k] for k in rank_of]
    if isinstance(outputs, dict):
        return {key: torch.stack([part[key][j] for part, j in picked]) if picked else outputs[key][:0]
                for key in outputs}
    return torch.stack([part[j] for part, j in picked]) if picked else outputs[:0]


def _to_cpu(outputs):
    if isinstance(outputs, dict):
        return {k: v.detach().cpu() for k, v in outputs.items()}
    return outputs.detach().cpu()
