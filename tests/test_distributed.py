"""torchrun on the CPU (gloo, 2 processes): the same parameters as 1 process with the same global batch,
exact resume of a killed 2-process run, rank-0-only outputs, evaluation counting every sample once."""
import json
import os
import subprocess
import sys

import pytest
import torch

import fastface

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_worker.py")
pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")


def torchrun(nproc, *args, cwd):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def worker(tmp_path, nproc, trainer, out, cfg, stop_after="-", workers=0):
    torchrun(nproc, WORKER, trainer, str(tmp_path / out), json.dumps(cfg), str(stop_after), str(workers),
             cwd=tmp_path)
    return tmp_path / out


def final(folder, step):
    return torch.load(folder / f"final_{step}.pt", weights_only=True)


def assert_states(a, b, **tol):
    assert a.keys() == b.keys()
    for name in a:
        for k in a[name]:
            torch.testing.assert_close(a[name][k].float(), b[name][k].float(), msg=f"{name}.{k}", **tol)


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    cfg = dict(n=48, dim=6, epochs=2, noise=0.0, checkpoint_every=100)
    one = worker(tmp_path, 1, "toy", "one", {**cfg, "batch_size": 8})
    two = worker(tmp_path, 2, "toy", "two", {**cfg, "batch_size": 4})
    assert_states(final(one, 12), final(two, 12), rtol=1e-5, atol=1e-6)
    logs = [[json.loads(line) for line in open(f / "log.jsonl")] for f in (one, two)]
    start = [r for r in logs[1] if r.get("event") == "start"][0]
    assert (start["world_size"], start["batch_size"], start["global_batch"]) == (2, 4, 8)
    steps = [[r for r in log if "loss_g" in r] for log in logs]
    assert len(steps[0]) == len(steps[1]) == 12           # rank 0 alone writes: one record per step
    for a, b in zip(*steps):                                # the logged loss is the mean over the ranks
        assert a["loss_g"] == pytest.approx(b["loss_g"], rel=1e-5, abs=1e-6)
    assert sorted(os.listdir(two)) == ["final_12.pt", "last.pt", "log.jsonl", "model.pt"]
    assert fastface.load(two / "model.pt").mlp[0].weight.shape == (6, 6)


def test_a_killed_two_process_run_resumes_exactly(tmp_path):
    cfg = dict(n=48, dim=6, epochs=2, batch_size=4, noise=0.1, checkpoint_every=2)   # noise: per-rank RNG
    full = worker(tmp_path, 2, "toy", "full", cfg)
    cut = worker(tmp_path, 2, "toy", "cut", cfg, stop_after=5)       # killed after step 5: last.pt at 4
    assert torch.load(cut / "last.pt", weights_only=True)["step"] == 4
    assert len(torch.load(cut / "last.pt", weights_only=True)["rng"]) == 2
    worker(tmp_path, 2, "toy", "cut", cfg)
    assert_states(final(full, 12), final(cut, 12), rtol=0, atol=0)


def test_gan_with_r1_under_torchrun_resumes_exactly(tmp_path):
    """The R1 penalty's double backward next to DistributedDataParallel: runs, and a killed run resumes."""
    cfg = dict(n_identities=4, images_per_identity=4, image_size=8, latent_dim=8, width=4, max_width=8,
               d_width=4, batch_size=2, epochs=2, r1_every=2, checkpoint_every=2, n_samples=4)
    full = worker(tmp_path, 2, "gan", "full", cfg)
    cut = worker(tmp_path, 2, "gan", "cut", cfg, stop_after=3)
    worker(tmp_path, 2, "gan", "cut", cfg)
    assert_states(final(full, 8), final(cut, 8), rtol=0, atol=0)
    records = [json.loads(line) for line in open(full / "log.jsonl")]
    assert [r["step"] for r in records if "r1" in r] == [1, 3, 5, 7]
    assert fastface.load(full / "model.pt", kind="gan").cfg.image_size == 8


def test_backbone_under_torchrun_resumes_and_evaluates_each_image_once(tmp_path):
    """BatchNorm keeps per-process statistics (as DDP does), so the backbone is compared with itself:
    a 2-process run killed and resumed equals an uninterrupted one; data come from a worker process."""
    cfg = dict(n_identities=6, images_per_identity=3, image_size=32, width=8, embedding_dim=16, epochs=2,
               batch_size=4, checkpoint_every=1, eval_every=2, eval_identities=3)   # 9 eval images: shards of 5 + 5
    full = worker(tmp_path, 2, "backbone", "full", cfg, workers=1)
    cut = worker(tmp_path, 2, "backbone", "cut", cfg, stop_after=1, workers=1)
    worker(tmp_path, 2, "backbone", "cut", cfg, workers=1)
    assert_states(final(full, 4), final(cut, 4), rtol=0, atol=0)
    evals = [json.loads(line) for line in open(full / "log.jsonl") if '"eval"' in line]
    assert [e["step"] for e in evals] == [2, 4] and all(e["eval_images"] == 9 for e in evals)
    assert all(0 <= e["eval_p1"] <= 1 and 0 <= e["eval_map_r"] <= 1 for e in evals)


def test_run_map_counts_every_sample_once(tmp_path):
    """Run.map over 9 samples on 2 processes: padded shards of 5, the repeat dropped, dataset order."""
    out = worker(tmp_path, 2, "toy", "map", dict(n=16, batch_size=4, epochs=1, eval_every=4))
    rec = [json.loads(line) for line in open(out / "log.jsonl") if '"map"' in line][0]
    assert rec["ids"] == list(range(9)) and rec["values"] == [10 * i for i in range(9)]
    assert sorted(set(rec["ranks"])) == [0, 1]                     # both processes computed a shard


def test_cli_runs_under_torchrun(tmp_path):
    """`torchrun -m fastface train r3an` (an FC transform without BatchNorm) equals the 1-process command."""
    base = ["--config", "fc", "--set", "source=arcface", "--set", "target=arcface", "--set", "n_identities=6",
            "--set", "images_per_identity=4", "--set", "epochs=2", "--set", "fc_layers=0", "--set", "fc_hidden=1",
            "--device", "cpu", "--workers", "0", "--quiet"]
    res = torchrun(2, "-m", "fastface", "train", "r3an", *base, "--set", "batch_size=4", "--out", "two", cwd=tmp_path)
    assert res.stdout.count("trained 6 of 6 steps") == 1          # only rank 0 prints
    from fastface.cli import main
    assert main(["train", "r3an", *base, "--set", "batch_size=8", "--out", str(tmp_path / "one")]) == 0
    a, b = fastface.load(tmp_path / "one" / "model.pt"), fastface.load(tmp_path / "two" / "model.pt")
    torch.testing.assert_close(a.mlp[0].weight, b.mlp[0].weight, rtol=1e-5, atol=1e-6)


def test_d2ae_trains_under_torchrun(tmp_path):
    """D²AE's routed objective (detached features, a functional call on detached classifier weights) inside
    DistributedDataParallel: two processes train and export a model whose f_T / f_P have the config's size."""
    cfg = dict(n_identities=4, images_per_identity=4, image_size=16, width=4, branch_width=8, feature_dim=6,
               decoder_width=16, batch_size=2, epochs=1, checkpoint_every=2)
    out = worker(tmp_path, 2, "d2ae", "run", cfg)
    steps = [json.loads(line) for line in open(out / "log.jsonl") if '"loss_confusion"' in line]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    f_t, f_p = fastface.load(out / "model.pt", kind="d2ae").encode(torch.rand(1, 3, 16, 16))
    assert f_t.shape == f_p.shape == (1, 6)
