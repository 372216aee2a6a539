"""The shared training loop: every `fastface train <model>` runs on it, in one process or under torchrun.

A trainer (subclass of Trainer) describes only what differs between models: its data set, its modules
and optimisers, one training step returning the losses to log, and the model it exports. The loop owns
the rest: device placement and DistributedDataParallel, per-rank data shards, AMP, gradient clipping,
lr schedules, atomic checkpoints with the full RNG state, exact resume, periodic hooks (evaluation,
sample grids), JSONL logs, the progress bar and OUT/model.pt.

    class MyTrainer(Trainer):
        name, Config, model_kind = "mine", MyConfig, "mine"
        def dataset(self): ...                      # map-style: len, [i] (or __getitems__)
        def build(self): self.modules = {...}; self.optimizers = {...}
        def train_step(self, batch): ...; self.run.optimize(self.optimizers["main"], loss); return {"loss": loss.item()}
        def export(self): return arch_config_dict, self.modules["model"]

    fit(MyTrainer, cfg, "out/")                     # or: torchrun --nproc_per_node N -m fastface train mine ...
"""
import abc
import json
import logging
import os
from contextlib import nullcontext
from types import SimpleNamespace

import torch
from torch.utils.data import DataLoader, default_collate
from tqdm import tqdm

from . import distributed
from .checkpoint import check_same_config, load_checkpoint, rng_state, save_checkpoint, seed_everything, \
    set_rng_state
from .config import TrainConfig
from .schedules import make_scheduler

log = logging.getLogger("fastface.train")

CHECKPOINT_FORMAT = 2   # 2: the shared loop (modules / optimizers / schedulers by name, RNG of every rank)


class Trainer(abc.ABC):
    """What one model's training describes. The loop sets self.cfg and self.run (see Run) before build()."""

    name = ""                     # `fastface train NAME`
    Config = TrainConfig          # its config dataclass
    model_kind = ""               # the kind model.pt records (fastface.load builds it)
    in_memory = False             # data already in tensors: no DataLoader worker processes
    legacy_config = None          # {key: value} a checkpoint without the key was trained with

    def __init__(self, cfg, run):
        self.cfg, self.run = cfg, run
        self.modules, self.optimizers, self.schedulers = {}, {}, {}

    @abc.abstractmethod
    def dataset(self):
        """The training data: a map-style data set of len N whose items (or __getitems__ batches) collate."""

    @abc.abstractmethod
    def build(self):
        """Create self.modules {name: nn.Module} (on self.run.device), self.optimizers {name: Optimizer} and,
        optionally, self.schedulers {name: LRScheduler} (default: schedule() for every optimiser)."""

    @abc.abstractmethod
    def train_step(self, batch):
        """One step on a batch (on the device); update through self.run.optimize; return {name: float}."""

    @abc.abstractmethod
    def export(self):
        """(architecture config dict, module) written to OUT/model.pt for fastface.load."""

    # ---- optional
    collate = None                # a DataLoader collate_fn (default: torch's default_collate)

    @staticmethod
    def permutation(n, seed, epoch):
        """The data order of an epoch (see distributed.ShardedBatchSampler)."""
        return distributed.epoch_permutation(n, seed, epoch)

    def schedule(self, optimizer):
        """The lr scheduler of one optimiser (default: constant lr)."""
        return make_scheduler(optimizer, self.run.total, schedule="constant")

    def log_values(self):
        """Extra values for each step's log record (default: the first optimiser's lr)."""
        if not self.optimizers:
            return {}
        return {"lr": next(iter(self.optimizers.values())).param_groups[0]["lr"]}

    def hooks(self):
        """[(every, fn(step))]: called on every rank after step % every == 0 and after the last step."""
        return []

    def train_mode(self):
        for m in self.modules.values():
            m.train()

    def finish(self):
        """After the last step, before export (e.g. re-estimating BatchNorm statistics)."""

    def state_dict(self):
        """Trainer state beyond modules / optimisers / schedulers / RNG (weights_only-safe values)."""
        return {}

    def load_state_dict(self, state):
        pass


class Run:
    """What the loop gives a trainer: cfg, device, dist (rank, world_size), step, total, steps_per_epoch,
    out_dir, is_main; ddp(module), optimize(optimizer, loss), map(dataset, fn), save_images(name, images),
    log(record)."""

    def __init__(self, cfg, out_dir, info, progress):
        self.cfg, self.out_dir, self.dist, self.progress = cfg, os.fspath(out_dir), info, progress
        self.device = info.device
        self.is_main = info.is_main
        self.step, self.epoch, self.total, self.steps_per_epoch = 0, 0, 0, 0
        self.amp = bool(cfg.amp) and self.device.type == "cuda"
        self.amp_dtype = (torch.bfloat16 if self.amp and torch.cuda.is_bf16_supported() else torch.float16)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        self.unreadable = 0
        self._log_file = None

    # ---- modules and updates
    def ddp(self, module):
        """module wrapped in DistributedDataParallel when there are several processes (else itself); with
        cfg.sync_bn its BatchNorm layers become SyncBatchNorm (in place: the parameters stay the same)."""
        if not self.dist.distributed:
            return module
        if self.cfg.sync_bn:
            if self.device.type != "cuda":
                raise ValueError("sync_bn needs CUDA devices (torch's SyncBatchNorm has no CPU kernel)")
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        if not any(p.requires_grad for p in module.parameters()):
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def optimize(self, optimizer, loss):
        """zero_grad, backward (scaled under fp16 AMP, outside autocast), clip (cfg.clip_grad_norm), step."""
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=False) if self.amp else nullcontext():
            self.scaler.scale(loss).backward()
        if self.cfg.clip_grad_norm > 0:
            self.scaler.unscale_(optimizer)
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.clip_grad_norm)
        self.scaler.step(optimizer)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp else nullcontext()

    # ---- evaluation and outputs
    @torch.no_grad()
    def map(self, dataset, fn, batch_size=256):
        """fn(batch) -> tensor or {name: tensor} over every item of dataset, each counted once: every rank
        takes its padded shard, the shards are gathered and the padding repeats dropped. Returns the
        outputs in dataset order (on the CPU) on every rank."""
        n = len(dataset)
        ids = distributed.shard_with_ids(n, self.dist.rank, self.dist.world_size)
        outs = []
        for s in range(0, len(ids), batch_size):
            chunk = ids[s:s + batch_size]
            items = dataset.__getitems__(chunk) if hasattr(dataset, "__getitems__") else [dataset[i] for i in chunk]
            batch = items if isinstance(items, dict) else default_collate(items)
            outs.append(fn(to_device(batch, self.device)))
        if outs and isinstance(outs[0], dict):
            out = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
        else:
            out = torch.cat(outs) if outs else torch.empty(0)
        return distributed.gather_unique(ids, out, n)

    def save_images(self, name, images, nrow=8):
        """images (N, C, H, W) in [0, 1] -> OUT/samples/NAME_STEP.png (main process only); returns the path."""
        if not self.is_main:
            return None
        from ..viz.grid import save_image_grid
        path = os.path.join(self.out_dir, "samples", f"{name}_{self.step:07d}.png")
        save_image_grid(path, images, nrow=nrow)
        return path

    def log(self, record):
        """Append record (with the current step) to OUT/log.jsonl (main process only)."""
        if self.is_main and self._log_file is not None:
            self._log_file.write(json.dumps({"step": self.step, **record}) + "\n")
            self._log_file.flush()


def to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def default_workers(world_size=1):
    """DataLoader worker processes per rank: the CPUs this process may use, shared by the ranks, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus // max(1, world_size) - 1))


def _check_workers(workers):
    if workers is None:
        return None
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0, got {workers!r}")
    return workers


def fit(trainer_cls, cfg, out_dir, *, device=None, resume=True, progress=True, stop_after=None, workers=None,
        **trainer_kwargs):
    """Train trainer_cls on cfg into out_dir: last.pt (full state), log.jsonl and, after the last step,
    model.pt. Resumes exactly from out_dir/last.pt; stop_after=N ends after step N (as if killed).
    Under torchrun every rank runs this; rank 0 writes. Returns the trainer (modules, run.step, ...)."""
    if not isinstance(cfg, trainer_cls.Config):
        raise TypeError(f"cfg must be a {trainer_cls.Config.__name__}, got {type(cfg).__name__}")
    workers = _check_workers(workers)
    info = distributed.setup(device)
    run = Run(cfg, out_dir, info, progress and info.is_main)
    trainer = trainer_cls(cfg, run, **trainer_kwargs)
    data = trainer.dataset()
    run.unreadable = len(getattr(data, "unreadable", None) or ())   # files an image folder left out
    run.global_batch = cfg.batch_size * info.world_size
    run.steps_per_epoch = len(data) // run.global_batch
    if run.steps_per_epoch == 0:
        raise ValueError(f"batch_size={cfg.batch_size} x {info.world_size} process(es) exceeds the {len(data)} "
                         f"training samples")
    run.total = cfg.epochs * run.steps_per_epoch
    run.total = min(run.total, cfg.max_steps) if cfg.max_steps else run.total
    seed_everything(cfg.seed)                 # the same initial weights on every rank
    trainer.build()
    if not trainer.schedulers:
        trainer.schedulers = {k: trainer.schedule(o) for k, o in trainer.optimizers.items()}
    if info.rank:                             # different noise per rank from here on
        seed_everything(cfg.seed + 7919 * info.rank)
    os.makedirs(out_dir, exist_ok=True)
    ckpt_path = os.path.join(out_dir, "last.pt")
    if resume and os.path.exists(ckpt_path):
        _resume(trainer, run, ckpt_path)
    sampler = distributed.ShardedBatchSampler(len(data), cfg.batch_size, info.rank, info.world_size, cfg.seed,
                                              trainer.permutation)
    n_workers = 0 if trainer.in_memory else (default_workers(info.world_size) if workers is None else workers)
    loader = DataLoader(data, batch_sampler=sampler, num_workers=n_workers,
                        collate_fn=trainer.collate or collate_readable, pin_memory=run.device.type == "cuda",
                        persistent_workers=n_workers > 0, generator=torch.Generator().manual_seed(cfg.seed))
    hooks = [(every, fn) for every, fn in trainer.hooks() if every]
    if run.is_main:
        log.info("train %s: %d step(s), %d per epoch; global batch %d = %d per process x %d process(es); %s; "
                 "%d data worker(s)", trainer.name, run.total, run.steps_per_epoch, run.global_batch,
                 cfg.batch_size, info.world_size, run.device, n_workers)
    bar = tqdm(total=run.total, initial=run.step, disable=not run.progress, desc=f"train {trainer.name}")
    with open(os.path.join(out_dir, "log.jsonl"), "a") if run.is_main else nullcontext() as log_file:
        run._log_file = log_file
        if run.step:
            run.log({"event": "resume", "world_size": info.world_size, "global_batch": run.global_batch})
        else:
            run.log({"event": "start", "world_size": info.world_size, "batch_size": cfg.batch_size,
                     "global_batch": run.global_batch, "total_steps": run.total, "device": str(run.device),
                     "config": cfg.to_dict()})
        while run.step < run.total and run.step != stop_after:
            run.epoch, skip = divmod(run.step, run.steps_per_epoch)
            sampler.set_epoch(run.epoch, skip)
            trainer.train_mode()
            for batch in loader:
                if isinstance(batch, dict) and "_unreadable" in batch:
                    run.unreadable += int(batch.pop("_unreadable"))
                with run.autocast():
                    losses = trainer.train_step(to_device(batch, run.device))
                if run.scaler.is_enabled():
                    run.scaler.update()
                for s in trainer.schedulers.values():
                    s.step()
                run.step += 1
                losses = distributed.mean_over_ranks(losses, run.device)
                record = {"epoch": run.epoch, **losses, **trainer.log_values()}
                if run.unreadable:
                    record["unreadable_files"] = run.unreadable
                run.log(record)
                bar.update(1)
                bar.set_postfix({k.removeprefix("loss_"): f"{v:.3f}" for k, v in losses.items()})
                for every, fn in hooks:
                    if run.step % every == 0 or run.step == run.total:
                        fn(run.step)
                if run.step % cfg.checkpoint_every == 0 or run.step == run.total:
                    _checkpoint(trainer, run, ckpt_path)
                if run.step >= run.total or run.step == stop_after:
                    break
        if run.step >= run.total:
            trainer.finish()
            if run.is_main:
                from ..models.serialization import save_model
                config, module = trainer.export()
                save_model(os.path.join(out_dir, "model.pt"), trainer.model_kind, config, module, cfg.to_dict())
                run.log({"event": "exported", "path": os.path.join(out_dir, "model.pt")})
        run._log_file = None
    bar.close()
    distributed.barrier()
    return trainer


def read_log(out_dir, events=False):
    """The records of OUT/log.jsonl: one per training step (with events=True also the others: "start",
    "eval", "exported", ..., which carry an "event" key)."""
    with open(os.path.join(out_dir, "log.jsonl")) as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    return records if events else [r for r in records if "event" not in r]


def whole_batch(batch):
    """The collate of in-memory data sets whose __getitems__ already returns the whole batch."""
    return batch


def collate_readable(items):
    """default_collate, counting the files a data set skipped: an item's "_unreadable" (the unreadable files
    it replaced, see ImageFolder(on_unreadable="substitute")) is summed into batch["_unreadable"]."""
    skipped = sum(int(it.pop("_unreadable", 0)) for it in items if isinstance(it, dict))
    batch = default_collate(items)
    if skipped:
        batch["_unreadable"] = skipped
    return batch


def _export_info(trainer):
    config, module = trainer.export()
    name = next((k for k, m in trainer.modules.items() if m is module), None)
    return None if name is None else {"kind": trainer.model_kind, "config": config, "module": name}


def _checkpoint(trainer, run, path):
    rngs = distributed.all_gather_objects(rng_state())
    if not run.is_main:
        return
    state = {"format": CHECKPOINT_FORMAT, "trainer": trainer.name, "step": run.step,
             "config": run.cfg.to_dict(), "world_size": run.dist.world_size,
             "data": {"seed": run.cfg.seed, "epoch": run.step // run.steps_per_epoch,
                      "batch": run.step % run.steps_per_epoch, "steps_per_epoch": run.steps_per_epoch,
                      "global_batch": run.global_batch},
             "modules": {k: m.state_dict() for k, m in trainer.modules.items()},
             "optimizers": {k: o.state_dict() for k, o in trainer.optimizers.items()},
             "schedulers": {k: s.state_dict() for k, s in trainer.schedulers.items()},
             "scaler": run.scaler.state_dict(), "rng": rngs, "trainer_state": trainer.state_dict(),
             "export": _export_info(trainer)}
    save_checkpoint(path, state)


def _resume(trainer, run, path):
    state = load_checkpoint(path, map_location="cpu")   # RNG states must stay CPU tensors
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} was written by an older fastface (before the shared training loop): its state "
                         f"does not load into today's trainer; train into a new --out folder")
    if state.get("trainer") != trainer.name:
        raise ValueError(f"{path} is a checkpoint of `fastface train {state.get('trainer')}`, not of "
                         f"`fastface train {trainer.name}`; use another --out folder")
    check_same_config(state.get("config"), run.cfg.to_dict(), path, trainer.legacy_config)
    if state["world_size"] != run.dist.world_size:
        raise ValueError(f"{path} was written by a run of {state['world_size']} process(es) and this run has "
                         f"{run.dist.world_size}: the global batch and data shards would change; resume with "
                         f"the same number of processes or train into a new --out folder")
    for kind, objs in (("modules", trainer.modules), ("optimizers", trainer.optimizers),
                       ("schedulers", trainer.schedulers)):
        if set(state[kind]) != set(objs):
            raise ValueError(f"{path} holds {kind} {sorted(state[kind])} but this run has {sorted(objs)}")
        for k, obj in objs.items():
            obj.load_state_dict(state[kind][k])
    if state["scaler"]:                       # empty when saved without fp16 AMP
        run.scaler.load_state_dict(state["scaler"])
    trainer.load_state_dict(state.get("trainer_state") or {})
    set_rng_state(state["rng"][run.dist.rank])
    run.step = int(state["step"])
    log.info("resumed from %s at step %d", path, run.step)


def ddp_view(run, **modules):
    """A namespace whose attributes are the given modules wrapped by run.ddp (for trainers that call
    sub-modules of one model separately, e.g. R³AN's G, E and D)."""
    return SimpleNamespace(**{k: (run.ddp(v) if isinstance(v, torch.nn.Module) else v) for k, v in modules.items()})
