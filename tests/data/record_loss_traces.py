"""Write tests/data/loss_traces.json: the per-step log of the first 50 CPU steps of `train backbone` and
`train r3an` (full R³AN and the FC baseline). Recorded at commit f3b6336, before both trainers moved onto
the shared loop; tests/test_train_loop.py checks that the shared loop reproduces them.

    python3 tests/data/record_loss_traces.py   # rewrites the file: only when a change is meant to alter them
"""
import inspect
import json
import os
import tempfile

import torch

BACKBONE = dict(n_identities=10, images_per_identity=8, image_size=32, channels=1, width=8, embedding_dim=16,
                epochs=5, batch_size=8, lr=0.05, margin_warmup=0.2, checkpoint_every=1000)
R3AN_MODEL = dict(g_width=0.0625, e_width=0.25, e_repeats=(1, 1, 1, 1, 1), d_width=0.5)
R3AN = dict(epochs=5, batch_size=8, checkpoint_every=1000, **R3AN_MODEL)


def r3an_triples(n=80, ds=16, dt=8, seed=3):
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(n, ds, generator=g), y=torch.nn.functional.normalize(torch.randn(n, dt, generator=g)),
                images=torch.randint(0, 256, (n, 3, 56, 56), generator=g, dtype=torch.uint8))


def read_log(folder):
    with open(os.path.join(folder, "log.jsonl")) as fh:
        return [json.loads(line) for line in fh]


def record():
    from fastface.train import BackboneConfig, train_backbone
    from fastface.train.r3an import R3ANConfig, train_r3an
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            kw = {"workers": 0} if "workers" in inspect.signature(train_backbone).parameters else {}
            train_backbone(BackboneConfig(**BACKBONE), os.path.join(tmp, "b"), progress=False, **kw)
            out["backbone"] = read_log(os.path.join(tmp, "b"))
            for preset in ("r3an", "fc"):
                train_r3an(R3ANConfig.preset(preset, **R3AN), os.path.join(tmp, preset), triples=r3an_triples(),
                           progress=False)
                out[f"r3an_{preset}"] = read_log(os.path.join(tmp, preset))
    finally:
        torch.set_num_threads(threads)
    return {k: [r for r in v if "event" not in r] for k, v in out.items()}   # the step records


if __name__ == "__main__":
    traces = record()
    assert all(len(v) == 50 for v in traces.values()), {k: len(v) for k, v in traces.items()}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "loss_traces.json")
    with open(path, "w") as fh:
        json.dump(traces, fh, indent=0)
    print({k: (v[0], v[-1]) for k, v in traces.items()})
