"""Run one training under torchrun for tests/test_distributed.py (not collected by pytest).

    torchrun --standalone --nproc_per_node N tests/ddp_worker.py TRAINER OUT CONFIG_JSON [STOP_AFTER] [WORKERS]

TRAINER: "toy" (below: no BatchNorm, two optimisers alternating, per-rank noise), or a `fastface train` name.
"""
import json
import sys
from dataclasses import dataclass

import torch

from fastface.models.r3an import FCTransform
from fastface.train import TRAINERS, TrainConfig, Trainer, fit
from fastface.train.distributed import exit_process, teardown


@dataclass
class ToyConfig(TrainConfig):
    n: int = 48
    dim: int = 6
    lr: float = 0.1
    noise: float = 0.1     # scale of the per-step noise drawn from the torch RNG (0: every rank computes alike)


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, n, dim):
        g = torch.Generator().manual_seed(5)
        self.x = torch.randn(n, dim, generator=g)
        self.y = self.x @ torch.randn(dim, dim, generator=g)
        self.t = torch.rand(n, 1, generator=g)

    def __len__(self):
        return self.x.shape[0]

    def __getitems__(self, idx):
        idx = torch.as_tensor(idx)
        return {"x": self.x[idx], "y": self.y[idx], "t": self.t[idx]}


class ToyTrainer(Trainer):
    """A transform g and a critic c updated alternately (a critic step, then a g step)."""
    name, Config, model_kind, in_memory = "toy", ToyConfig, "r3an", True
    collate = staticmethod(lambda b: b)

    def dataset(self):
        return ToyDataset(self.cfg.n, self.cfg.dim)

    def build(self):
        d = self.cfg.dim
        self.spec = {"kind": "fc", "source_dim": d, "target_dim": d, "hidden": 1, "n_hidden": 0}
        self.modules = {"g": FCTransform(d, d, 1, 0).to(self.run.device), "c": torch.nn.Linear(d, 1).to(self.run.device)}
        self.optimizers = {k: torch.optim.SGD(m.parameters(), lr=self.cfg.lr, momentum=0.9)
                           for k, m in self.modules.items()}
        self.g, self.c = self.run.ddp(self.modules["g"]), self.run.ddp(self.modules["c"])

    def train_step(self, batch):
        x, y, t = batch["x"], batch["y"], batch["t"]
        noise = torch.randn_like(x) * self.cfg.noise
        loss_c = ((self.c(self.g(x).detach() + noise) - t) ** 2).mean()
        self.run.optimize(self.optimizers["c"], loss_c)
        out = self.g(x + noise)
        loss_g = ((out - y) ** 2).mean() + 0.1 * (self.c(out) ** 2).mean()
        self.run.optimize(self.optimizers["g"], loss_g)
        return {"loss_c": loss_c.item(), "loss_g": loss_g.item()}

    def export(self):
        return self.spec, self.modules["g"]

    def hooks(self):
        return [(self.cfg.eval_every, self.map_ids)]

    def map_ids(self, step):
        """Run.map over 9 samples: each row says which sample and which rank computed it."""
        data = [{"i": i} for i in range(9)]
        rank = self.run.dist.rank
        out = self.run.map(data, lambda b: {"i": b["i"], "value": 10 * b["i"],
                                            "rank": torch.full_like(b["i"], rank)}, batch_size=2)
        self.run.log({"event": "map", "ids": out["i"].tolist(), "values": out["value"].tolist(),
                      "ranks": out["rank"].tolist()})


def main(argv):
    name, out, overrides = argv[0], argv[1], json.loads(argv[2])
    stop_after = int(argv[3]) if len(argv) > 3 and argv[3] != "-" else None
    workers = int(argv[4]) if len(argv) > 4 else 0
    cls = ToyTrainer if name == "toy" else TRAINERS[name]
    cfg = cls.Config.from_dict(overrides)
    trainer = fit(cls, cfg, out, device="cpu", progress=False, stop_after=stop_after, workers=workers)
    if trainer.run.is_main:
        torch.save({k: m.state_dict() for k, m in trainer.modules.items()}, f"{out}/final_{trainer.run.step}.pt")
    teardown()


if __name__ == "__main__":
    main(sys.argv[1:])
    exit_process(0)
