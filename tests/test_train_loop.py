"""The shared training loop: unchanged logs of the trainers moved onto it, exact resume of every trainer,
RNG state (CUDA included), schedules, configs and --set, data order and shards, fastface.load, the CLI."""
import json
import os
import random
import sys

import numpy as np
import pytest
import torch

import fastface
from fastface.models.serialization import FORMAT_VERSION, read_model, save_model
from fastface.train import TRAINERS, BackboneConfig, R3ANConfig, train_backbone, train_r3an
from fastface.train import checkpoint as ckpt
from fastface.train import distributed
from fastface.train.config import TrainConfig
from fastface.train.loop import read_log
from fastface.train.schedules import lr_factor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "data"))
import record_loss_traces  # noqa: E402

BACKBONE = dict(n_identities=6, images_per_identity=4, image_size=32, channels=1, width=8, embedding_dim=16,
                epochs=2, batch_size=8, checkpoint_every=2, lr=0.05)
R3AN = dict(epochs=2, batch_size=8, checkpoint_every=2, g_width=0.0625, e_width=0.25, e_repeats=(1, 1, 1, 1, 1),
            d_width=0.5)


def triples(n=24, seed=0):
    return record_loss_traces.r3an_triples(n=n, seed=seed)


# ---------------------------------------------------------------------------- unchanged by the move
def test_first_50_steps_are_those_recorded_before_the_shared_loop():
    """tests/data/loss_traces.json holds the logs of the old backbone and R³AN loops (commit f3b6336)."""
    with open(os.path.join(HERE, "data", "loss_traces.json")) as fh:
        recorded = json.load(fh)
    now = record_loss_traces.record()
    assert set(now) == set(recorded) == {"backbone", "r3an_r3an", "r3an_fc"}
    for name in recorded:
        assert len(now[name]) == len(recorded[name]) == 50, name
        for old, new in zip(recorded[name], now[name]):
            assert new.keys() == old.keys(), name
            for key in old:   # same process, same ops: equal up to float rounding of another CPU's kernels
                assert new[key] == pytest.approx(old[key], rel=1e-4, abs=1e-6), (name, old["step"], key)


# ---------------------------------------------------------------------------- exact resume, every trainer
def _run(name, out, stop_after=None):
    if name == "backbone":
        t = train_backbone(BackboneConfig(**BACKBONE), out, progress=False, stop_after=stop_after, workers=0)
        return {"model": t["model"].state_dict(), "head": t["head"].state_dict()}, t["step"]
    cfg = R3ANConfig.preset(name.split(":")[1], **R3AN)
    t = train_r3an(cfg, out, triples=triples(), progress=False, stop_after=stop_after)
    return {"model": t["model"].state_dict()}, t["step"]


@pytest.mark.parametrize("name", ["backbone", "r3an:r3an", "r3an:fc"])
def test_a_killed_run_resumes_bit_for_bit(tmp_path, name):
    full, steps = _run(name, tmp_path / "full")
    _, cut = _run(name, tmp_path / "cut", stop_after=3)     # killed after step 3; last.pt holds step 2
    assert cut == 3 and ckpt.load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 2
    resumed, steps2 = _run(name, tmp_path / "cut")
    assert steps == steps2 == 6
    for part in full:
        for k in full[part]:
            torch.testing.assert_close(full[part][k], resumed[part][k], rtol=0, atol=0, msg=f"{part}.{k}")
    # the resumed log continues the killed one: step 3 was recomputed, nothing skipped
    assert [r["step"] for r in read_log(tmp_path / "cut")] == [1, 2, 3, 3, 4, 5, 6]
    assert read_log(tmp_path / "cut")[-1] == read_log(tmp_path / "full")[-1]
    assert [r["event"] for r in read_log(tmp_path / "full", events=True) if "event" in r] == ["start", "exported"]


def test_every_trainer_is_covered():
    # exact resume: backbone and r3an above, facevit (every variant) in tests/test_facevit.py, gan in
    # tests/test_train_gan.py (and under torchrun in tests/test_distributed.py), inversion in
    # tests/test_inversion.py, d2ae in tests/test_train_d2ae.py; add a new trainer
    assert set(TRAINERS) == {"backbone", "r3an", "facevit", "gan", "inversion", "d2ae"}


def test_checkpoint_holds_the_full_state(tmp_path):
    train_backbone(BackboneConfig(**BACKBONE), tmp_path, progress=False, stop_after=2, workers=0)
    state = torch.load(tmp_path / "last.pt", weights_only=True)      # no code runs
    assert state["format"] == 2 and state["trainer"] == "backbone" and state["world_size"] == 1
    assert set(state["modules"]) == {"model", "head"} and set(state["optimizers"]) == {"sgd"}
    assert state["data"] == {"seed": 0, "epoch": 0, "batch": 2, "steps_per_epoch": 3, "global_batch": 8}
    assert {"python", "numpy", "torch"} <= set(state["rng"][0])
    assert state["export"]["kind"] == "backbone" and state["export"]["module"] == "model"
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_rng_state_round_trips_python_numpy_torch():
    ckpt.seed_everything(3)
    state = ckpt.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_cuda_rng_is_saved_for_every_device_and_restored_from_cpu_tensors(monkeypatch):
    """Without a GPU: fake two CUDA devices and check what rng_state / set_rng_state hand to torch.cuda."""
    states = [torch.full((16,), i, dtype=torch.uint8) for i in range(2)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: restored.extend(s))
    state = ckpt.rng_state()
    assert [s.tolist() for s in state["cuda"]] == [s.tolist() for s in states]
    # a checkpoint loaded with map_location onto another device: tensors of another dtype come back as CPU uint8
    state["cuda"] = [s.to(torch.int64) for s in state["cuda"]]
    ckpt.set_rng_state(state)
    assert all(s.device.type == "cpu" and s.dtype == torch.uint8 for s in restored)
    assert [s.tolist() for s in restored] == [s.tolist() for s in states]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="CUDA RNG state of 2 device"):
        ckpt.set_rng_state(state)


def test_resume_loads_the_checkpoint_on_the_cpu(tmp_path, monkeypatch):
    import fastface.train.loop as loop
    train_backbone(BackboneConfig(**BACKBONE), tmp_path, progress=False, stop_after=2, workers=0)
    seen = []
    real = loop.load_checkpoint
    monkeypatch.setattr(loop, "load_checkpoint", lambda p, map_location: seen.append(map_location) or real(p, map_location))
    train_backbone(BackboneConfig(**BACKBONE), tmp_path, progress=False, workers=0)
    assert seen == ["cpu"]


def test_resume_refuses_other_trainers_world_sizes_and_old_checkpoints(tmp_path):
    train_backbone(BackboneConfig(**BACKBONE), tmp_path, progress=False, stop_after=2, workers=0)
    with pytest.raises(ValueError, match="checkpoint of `fastface train backbone`"):
        train_r3an(R3ANConfig(**R3AN), tmp_path, triples=triples(), progress=False)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    torch.save({**state, "world_size": 4}, tmp_path / "last.pt")
    with pytest.raises(ValueError, match="run of 4 process"):
        train_backbone(BackboneConfig(**BACKBONE), tmp_path, progress=False, workers=0)
    torch.save({k: v for k, v in state.items() if k != "format"}, tmp_path / "last.pt")
    with pytest.raises(ValueError, match="older fastface"):
        train_backbone(BackboneConfig(**BACKBONE), tmp_path, progress=False, workers=0)


# ---------------------------------------------------------------------------- loop pieces
def test_lr_schedules():
    assert [lr_factor(s, 10, schedule="multistep", milestones=(0.5, 0.8)) for s in (0, 4, 5, 7, 8, 9)] == \
        pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert [lr_factor(s, 10, schedule="constant", warmup=0.3) for s in range(4)] == pytest.approx([1 / 3, 2 / 3, 1, 1])
    cos = [lr_factor(s, 12, schedule="cosine", warmup=1 / 6, final=0.1) for s in range(12)]
    assert cos[:2] == pytest.approx([0.5, 1.0]) and cos[2] == pytest.approx(1.0)
    assert cos[7] == pytest.approx(0.1 + 0.9 * 0.5) and cos[-1] > 0.1 and all(a >= b for a, b in zip(cos[2:], cos[3:]))
    with pytest.raises(ValueError, match="schedule must be one of"):
        lr_factor(0, 10, schedule="linear")


def test_gradient_clipping_bounds_the_update(tmp_path):
    from fastface.train.distributed import DistInfo
    from fastface.train.loop import Run
    lin = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=1.0)
    run = Run(TrainConfig(clip_grad_norm=0.5), tmp_path, DistInfo(), False)
    before = torch.cat([p.detach().flatten().clone() for p in lin.parameters()])
    run.optimize(opt, 100 * lin(torch.ones(3, 4)).sum())
    after = torch.cat([p.detach().flatten() for p in lin.parameters()])
    assert (after - before).norm().item() == pytest.approx(0.5, rel=1e-5)   # lr 1: the step is the clipped grad


def test_amp_is_cuda_only_and_picks_bf16_where_supported(tmp_path, monkeypatch):
    from fastface.train.distributed import DistInfo
    from fastface.train.loop import Run
    run = Run(TrainConfig(amp=True), tmp_path, DistInfo(device=torch.device("cpu")), False)
    assert not run.amp and not run.scaler.is_enabled()
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    fp16 = Run(TrainConfig(amp=True), tmp_path, DistInfo(device=torch.device("cuda", 0)), False)
    assert fp16.amp and fp16.amp_dtype == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    bf16 = Run(TrainConfig(amp=True), tmp_path, DistInfo(device=torch.device("cuda", 0)), False)
    assert bf16.amp_dtype == torch.bfloat16 and not bf16.scaler.is_enabled()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_backbone_trains_and_resumes_on_cuda(tmp_path):
    cfg = BackboneConfig(**BACKBONE)
    full = train_backbone(cfg, tmp_path / "full", device="cuda", progress=False, workers=0)
    train_backbone(cfg, tmp_path / "cut", device="cuda", progress=False, stop_after=3, workers=0)
    state = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert "cuda" in state["rng"][0] and all(s.device.type == "cpu" for s in state["rng"][0]["cuda"])
    resumed = train_backbone(cfg, tmp_path / "cut", device="cuda", progress=False, workers=0)
    for k, v in full["model"].state_dict().items():
        torch.testing.assert_close(v, resumed["model"].state_dict()[k], rtol=1e-4, atol=1e-5, msg=k)


def test_sharded_batches_partition_each_global_batch():
    one = distributed.ShardedBatchSampler(50, 8, seed=3)
    two = [distributed.ShardedBatchSampler(50, 4, rank=r, world_size=2, seed=3) for r in range(2)]
    for s in (one, *two):
        s.set_epoch(2)
    assert len(one) == len(two[0]) == 6                      # incomplete global batches dropped
    for b1, b20, b21 in zip(one, *two):
        assert b1 == b20 + b21
    assert sorted(sum(list(one), [])) == sorted(set(sum(list(one), [])))
    one.set_epoch(2, start=4)                               # resume at batch 4 of epoch 2
    full = distributed.ShardedBatchSampler(50, 8, seed=3)
    full.set_epoch(2)
    assert list(one) == list(full)[4:]
    full.set_epoch(3)
    assert list(full) != list(one)                           # another epoch, another order


def test_shards_with_ids_and_gather_unique(monkeypatch):
    shards = [distributed.shard_with_ids(7, r, 3) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert sorted(sum(shards, [])) == sorted(list(range(7)) + [0, 1])   # padded with repeats of the first ids
    parts = [(ids, {"v": torch.tensor([10.0 * i for i in ids])}) for ids in shards]
    monkeypatch.setattr(distributed, "all_gather_objects", lambda obj: parts)
    out = distributed.gather_unique(shards[0], parts[0][1], 7)
    assert out["v"].tolist() == [10.0 * i for i in range(7)]
    monkeypatch.setattr(distributed, "all_gather_objects", lambda obj: parts[:2])
    with pytest.raises(RuntimeError, match="lost samples"):
        distributed.gather_unique(shards[0], parts[0][1], 7)


def test_data_workers_render_the_same_batches(tmp_path):
    """SynthFaces renders inside DataLoader worker processes (kept across the epochs), deterministically by
    seed and index."""
    cfg = BackboneConfig(**BACKBONE)
    train_backbone(cfg, tmp_path / "w0", progress=False, workers=0)
    train_backbone(cfg, tmp_path / "w2", progress=False, workers=2)
    assert read_log(tmp_path / "w0") == read_log(tmp_path / "w2")
    with pytest.raises(ValueError, match="workers must be an int >= 0"):
        train_backbone(cfg, tmp_path / "bad", progress=False, workers=-1)


def test_corrupt_images_are_skipped_and_counted_during_training(tmp_path):
    from PIL import Image

    from fastface.data import ImageFolder, SynthFaces, export_image_folder
    root = tmp_path / "faces"
    export_image_folder(SynthFaces(n_identities=4, images_per_identity=4, size=32, seed=1), root)
    first = sorted((root / sorted(os.listdir(root))[0]).iterdir())
    victim = first[0].with_suffix(".jpg")                # a JPEG truncated inside its pixel data passes the
    Image.open(first[0]).convert("RGB").save(victim, quality=95)   # header check and fails when decoded
    first[0].unlink()
    victim.write_bytes(victim.read_bytes()[:-len(victim.read_bytes()) // 3])
    (root / sorted(os.listdir(root))[1] / "broken.png").write_bytes(b"not an image")   # fails the header check
    with pytest.warns(RuntimeWarning, match="skipped 1 unreadable file"):
        ds = ImageFolder(root, size=32, channels=1, on_unreadable="substitute")
    assert len(ds) == 16 and [os.path.basename(p) for p in ds.unreadable] == ["broken.png"]
    with pytest.warns(RuntimeWarning, match="takes its place"):
        item = ds[ds.paths.index(str(victim))]
    assert item["_unreadable"] == 1 and item["path"] != str(victim)
    with pytest.raises(ValueError, match="cannot read image"), pytest.warns(RuntimeWarning):
        ImageFolder(root, size=32, channels=1)[ds.paths.index(str(victim))]
    cfg = BackboneConfig(**{**BACKBONE, "data": str(root), "epochs": 1, "batch_size": 4})
    with pytest.warns(RuntimeWarning):
        out = train_backbone(cfg, tmp_path / "run", progress=False, workers=0)
    assert out["step"] == 4
    assert read_log(tmp_path / "run")[-1]["unreadable_files"] == 2      # both, never a crash
    with pytest.raises(ValueError, match="on_unreadable must be one of"):
        ImageFolder(root, on_unreadable="ignore")


def test_r3an_writes_sample_grids(tmp_path):
    from PIL import Image
    cfg = R3ANConfig.preset("r3an", **{**R3AN, "sample_every": 3})
    train_r3an(cfg, tmp_path, triples=triples(), progress=False)
    files = sorted(os.listdir(tmp_path / "samples"))
    assert files == ["reconstruction_0000003.png", "reconstruction_0000006.png"]
    w, h = Image.open(tmp_path / "samples" / files[0]).size
    assert (w, h) == (8 * 58 + 2, 2 * 58 + 2)                    # 8 columns, real over G(X), 2-pixel gaps


def test_backbone_evaluation_hook_logs_identification(tmp_path):
    cfg = BackboneConfig(**{**BACKBONE, "eval_every": 3, "eval_identities": 3})
    train_backbone(cfg, tmp_path, progress=False, workers=0)
    evals = [r for r in read_log(tmp_path, events=True) if r.get("event") == "eval"]
    assert [e["step"] for e in evals] == [3, 6] and all(e["eval_images"] == 12 for e in evals)
    assert all(0 <= e["eval_p1"] <= 1 for e in evals)


# ---------------------------------------------------------------------------- configs and --set
def test_set_overrides_are_typed_and_validated():
    parse = BackboneConfig.parse_overrides
    assert parse(["lr=0.01", "stem_pool=false", "epochs=3", "milestones=0.3,0.6", "data=/x/y"]) == \
        {"lr": 0.01, "stem_pool": False, "epochs": 3, "milestones": (0.3, 0.6), "data": "/x/y"}
    assert parse(["milestones=[0.2, 0.4]"]) == {"milestones": (0.2, 0.4)}
    with pytest.raises(ValueError, match=r"unknown config key 'lrate'; valid keys: seed, epochs"):
        parse(["lrate=1"])
    with pytest.raises(ValueError, match=r"--set epochs='three': expected a int value"):
        parse(["epochs=three"])
    with pytest.raises(ValueError, match="expected a bool value"):
        parse(["amp=maybe"])
    with pytest.raises(ValueError, match="needs key=value"):
        parse(["lr"])
    with pytest.raises(TypeError, match="config field epochs must be int, got 2.5"):
        BackboneConfig(epochs=2.5)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        BackboneConfig(batch_size=0)
    with pytest.raises(ValueError, match="arch must be one of"):
        BackboneConfig(arch="vgg")
    assert BackboneConfig(data=__import__("pathlib").Path("/x/y")).data == "/x/y"     # a path is a str field
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N', got 'gpu'"):
        train_backbone(BackboneConfig(**BACKBONE), "unused", device="gpu", progress=False)


def test_config_files_and_help(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"lr": 0.2, "epochs": 1}))
    assert BackboneConfig.from_file(path, epochs=4).lr == 0.2 and BackboneConfig.from_file(path, epochs=4).epochs == 4
    path.write_text(json.dumps({"lr": 0.2, "colour": 1}))
    with pytest.raises(ValueError, match=r"unknown config keys in .*\['colour'\]; valid keys: seed"):
        BackboneConfig.from_file(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        BackboneConfig.from_file(path)
    assert R3ANConfig.from_file("arch3").use_reg and not R3ANConfig.from_file("arch3").use_rec   # packaged
    help_text = BackboneConfig.help_text()
    for name in BackboneConfig.field_names():
        assert f"  {name} (" in help_text
    assert "lr (float, default 0.1)" in help_text and "global batch" in help_text


# ---------------------------------------------------------------------------- fastface.load
def test_load_returns_the_eval_model_of_each_kind(tmp_path):
    b = train_backbone(BackboneConfig(**BACKBONE), tmp_path / "b", progress=False, workers=0)
    r = train_r3an(R3ANConfig.preset("fc", **R3AN), tmp_path / "r", triples=triples(), progress=False)
    x = torch.rand(3, 1, 32, 32)
    for path in (tmp_path / "b" / "model.pt", tmp_path / "b" / "last.pt"):
        model = fastface.load(path)
        assert isinstance(model, fastface.backbones.ArcFaceResNet) and not model.training
        torch.testing.assert_close(model(x)[0], b["model"].eval()(x)[0])
    tr = fastface.load(tmp_path / "r" / "model.pt", kind="r3an")
    f = torch.randn(4, 16)
    torch.testing.assert_close(tr.transform(f), r["model"].transform(f))
    saved = read_model(tmp_path / "r" / "model.pt")
    assert saved.kind == "r3an" and saved.config["kind"] == "fc" and saved.fastface_version == fastface.__version__
    state = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert state["train_config"]["lr"] == 0.05 and "lr" not in state["config"]    # architecture only
    with pytest.raises(ValueError, match="holds a backbone model, not a r3an"):
        fastface.load(tmp_path / "b" / "model.pt", kind="r3an")


def test_load_reads_files_of_fastface_before_the_loop():
    demo = fastface.load(os.path.join(os.path.dirname(fastface.__file__), "assets", "demo_backbone.pt"))
    assert demo.embedding_dim == 128 and not demo.training


def test_load_rejects_what_is_not_a_fastface_model(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        fastface.load(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="is not a fastface model"):
        fastface.load(tmp_path / "junk.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list"):
        fastface.load(tmp_path / "list.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "dict.pt")
    with pytest.raises(ValueError, match="none of the entries of model.pt"):
        fastface.load(tmp_path / "dict.pt")
    torch.save({"f": random.Random()}, tmp_path / "code.pt")              # needs unpickling code
    with pytest.raises(ValueError, match="weights_only=True"):
        fastface.load(tmp_path / "code.pt")
    model = torch.nn.Linear(2, 2)
    save_model(tmp_path / "m.pt", "r3an", {"kind": "fc", "source_dim": 2, "target_dim": 2, "hidden": 1,
                                           "n_hidden": 0}, torch.nn.Sequential(model))
    with pytest.raises(ValueError, match="weights do not fit"):
        fastface.load(tmp_path / "m.pt")
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    torch.save({**state, "format_version": FORMAT_VERSION + 1}, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="upgrade fastface"):
        fastface.load(tmp_path / "future.pt")
    torch.save({**state, "kind": "vae"}, tmp_path / "kind.pt")
    with pytest.raises(ValueError, match="kind 'vae'"):
        fastface.load(tmp_path / "kind.pt")
    with pytest.raises(TypeError, match="path must be a file path"):
        fastface.load(3)
    with pytest.raises(ValueError, match="kind must be one of"):
        save_model(tmp_path / "x.pt", "vae", {}, model)


# ---------------------------------------------------------------------------- the command line
def test_cli_train_shape_resume_and_errors(tmp_path, capsys):
    from fastface.cli import main
    args = ["train", "backbone", "--set", "n_identities=4", "--set", "images_per_identity=4", "--set", "image_size=32",
            "--set", "width=8", "--set", "embedding_dim=16", "--set", "batch_size=8", "--set", "checkpoint_every=1",
            "--set", "epochs=3", "--out", str(tmp_path / "run"), "--device", "cpu", "--workers", "0", "--quiet"]
    assert main(args + ["--steps", "4", "--seed", "2"]) == 0
    assert "trained 4 of 4 steps" in capsys.readouterr().out
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["config"]["seed"] == 2 and state["config"]["max_steps"] == 4
    assert main(args + ["--steps", "4", "--seed", "2"]) == 0          # rerun: resumes, finds nothing left
    assert len(read_log(tmp_path / "run")) == 4
    assert main(args + ["--steps", "4", "--seed", "3"]) == 2          # another config: refused, one line
    assert "seed: 2 there, 3 now" in capsys.readouterr().err
    assert main(["train", "backbone", "--set", "colour=red", "--out", str(tmp_path / "x")]) == 2
    assert "valid keys: seed, epochs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "vgg", "--out", str(tmp_path / "x")])   # only implemented trainers are listed
    assert "invalid choice: 'vgg'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "r3an", "--help"])
    out = capsys.readouterr().out
    assert "config fields (--set KEY=VALUE)" in out and "lambda_rec (float, default 0.01)" in out


def test_python_dash_m_fastface(tmp_path):
    import subprocess
    res = subprocess.run([sys.executable, "-m", "fastface", "train", "--help"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert res.returncode == 0 and "torchrun --nproc_per_node N -m fastface train" in res.stdout.replace("\n", " ")
