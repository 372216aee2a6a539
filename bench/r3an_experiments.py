"""R³AN experiments on SynthFaces: Tables 2-6 of the paper (structure), with the FC baseline beside R³AN.

    python bench/r3an_experiments.py --out runs/r3an --priors Res18,Mb-6,Res50,R18-demo   # ~80 min on 2 cores

1. Trains the prior models (MobileNetV2 T=6 and T=16, ArcFace IR ResNet-18, ResNet-50; 256-d)
   on SynthFaces (seed 0) with `train_backbone`, and loads the shipped demo backbone (R18-demo,
   128-d) as a further prior (Table 2: their own top-1 with distractors). Mb-16 alone takes
   ~20 min on 2 CPU cores; leave it out with --priors.
2. Encodes the R³AN training sets (domain A: the priors' training identities, seed 0; domain B:
   unseen identities, seed 1) and the evaluation set (held-out identities, seed 2, plus
   one-image distractor identities, seed 3) with every prior.
3. Trains FC, Arch1-7 and R³AN on Mb-6 -> Res18 (Table 3), FC and R³AN on more pairs (Table 5),
   on domain B (Table 4), and evaluates the Table 5 models in gallery mode (Table 6).
4. Writes OUT/r3an_results.md, OUT/results.json and OUT/fig4_reconstructions.png.
Every training resumes from its folder, so the script can be re-run after an interruption.
"""
import argparse
import json
import os
import sys
import time

import torch

from fastface.backbones.encoders import DEMO_CHECKPOINT
from fastface.data import SynthFaces
from fastface.eval.cmfr import cmfr_scores, markdown_table, reconstruction_figure
from fastface.train import BackboneConfig, load_checkpoint, train_backbone
from fastface.train.checkpoint import check_same_config
from fastface.train.r3an import (LEGACY_CONFIG, R3ANConfig, feature_encoder, load_transform, make_triples,
                                 render_images, to_recon_images, train_r3an, transform_features)

PRIORS = {  # name: BackboneConfig overrides (MobileNetV2 learns faster at lr 0.03 than 0.1 on SynthFaces)
    "Mb-6": dict(arch="mobilenetv2", expansion=6, width_mult=0.35, activation="prelu", lr=0.03),
    "Mb-16": dict(arch="mobilenetv2", expansion=16, width_mult=0.35, activation="prelu", lr=0.03),
    "Res18": dict(arch="arcface_resnet18", width=12),
    "Res50": dict(arch="resnet50", width=8),
    # the ArcFace IR ResNet-18 shipped for `fastface demo` (width 16, 128-d, 64 px, no stem down-sampling,
    # 1000 identities x 24 images, 2625 steps): a stronger prior than the CPU-sized ones above
    "R18-demo": dict(checkpoint=DEMO_CHECKPOINT),
}
# Table 3's pair is small -> strongest (the paper: Mb-6 -> Res101); on SynthFaces the ArcFace ResNet-18
# generalises best to unseen identities of the CPU-sized priors
TABLE3_PAIR = ("Mb-6", "Res18")
TABLE5_PAIRS = [("Mb-6", "Res18"), ("R18-demo", "Res18"), ("Res18", "R18-demo"), ("Mb-6", "Mb-16")]
TABLE4_PAIRS = [("R18-demo", "Res18"), ("Mb-6", "Mb-16")]
ABLATIONS = ["fc", "arch1", "arch2", "arch3", "arch4", "arch5", "arch6", "arch7", "r3an"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=64,
                   help="SynthFaces render size for the priors (>= 64: stem down-sampling)")
    p.add_argument("--prior-identities", type=int, default=1000)
    p.add_argument("--prior-images", type=int, default=8)
    p.add_argument("--prior-epochs", type=int, default=16)
    p.add_argument("--prior-margin", type=float, default=0.4, help="ArcFace margin m of the priors (s = 32)")
    p.add_argument("--prior-margin-warmup", type=float, default=0.3,
                   help="fraction of the priors' steps over which m ramps up from 0 (with m = 0.4 from the "
                        "first step the priors did not start learning in short CPU runs; with m = 0 they "
                        "classified their training faces but generalised poorly)")
    p.add_argument("--r3an-identities", type=int, default=300, help="identities of each R³AN training domain")
    p.add_argument("--r3an-images", type=int, default=8)
    p.add_argument("--r3an-epochs", type=int, default=20)
    p.add_argument("--probe-identities", type=int, default=60)
    p.add_argument("--probe-images", type=int, default=4)
    p.add_argument("--distractors", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64, help="mini-batch of the priors and of R³AN")
    p.add_argument("--g-width", type=float, default=0.25)
    p.add_argument("--e-width", type=float, default=0.25)
    p.add_argument("--d-width", type=float, default=0.5)
    p.add_argument("--e-activation", default="relu6", choices=("relu6", "relu", "prelu"),
                   help="E's activation (relu6 = the paper's; its units died on SynthFaces, see docs/R3AN_RESULTS.md)")
    p.add_argument("--quick", action="store_true", help="Table 3 pair only, no Tables 4-6 extra pairs")
    p.add_argument("--priors", default=",".join(PRIORS),
                   help="comma-separated prior models to train and pair (Mb-16's depthwise convs are slow on CPU)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    dev = torch.device(args.device)

    # 1. priors
    priors = {}
    chosen = args.priors.split(",")
    if set(chosen) - set(PRIORS) or TABLE3_PAIR[0] not in chosen or TABLE3_PAIR[1] not in chosen:
        p.error(f"--priors must name some of {', '.join(PRIORS)}, including {' and '.join(TABLE3_PAIR)}")
    for name, kw in ((n, PRIORS[n]) for n in chosen):
        if "checkpoint" in kw:  # a trained model: no training
            priors[name] = feature_encoder(kw["checkpoint"], dev)
            continue
        cfg = BackboneConfig(n_identities=args.prior_identities, images_per_identity=args.prior_images,
                             image_size=args.size, channels=3, stem_pool=args.size >= 64, embedding_dim=256,
                             epochs=args.prior_epochs, batch_size=args.batch_size, s=32.0, m=args.prior_margin,
                             margin_warmup=args.prior_margin_warmup, seed=0,
                             checkpoint_every=100, **kw)
        folder = os.path.join(args.out, "priors", name)
        if not finished(folder, cfg.to_dict()):
            print(f"== training prior {name}", flush=True)
            train_backbone(cfg, folder, device=dev)
        priors[name] = feature_encoder(os.path.join(folder, "model.pt"), dev)
    print(f"priors ready ({time.time() - t0:.0f} s)", flush=True)

    # 2. features
    def render(seed, n_id, n_img):
        return render_images(SynthFaces(n_id, n_img, size=args.size, channels=3, seed=seed))

    domains = {"A": render(0, args.r3an_identities, args.r3an_images),   # the priors' identities
               "B": render(1, args.r3an_identities, args.r3an_images)}   # unseen identities
    probe_images, probe_labels = render(2, args.probe_identities, args.probe_images)
    dis_images, _ = render(3, args.distractors, 1)
    feats = {name: {"probe": enc_all(enc, probe_images), "distractors": enc_all(enc, dis_images)}
             for name, enc in priors.items()}
    print(f"features ready ({time.time() - t0:.0f} s)", flush=True)

    results = {"settings": vars(args), "priors": {}, "table3": {}, "table4": {}, "table5": {}, "table6": {}}
    for name in priors:
        results["priors"][name] = cmfr_scores(feats[name], feats[name], probe_labels)

    triple_cache = {}

    def triples(domain, src, tgt):
        key = (domain, src, tgt)
        if key not in triple_cache:
            images, ids = domains[domain]
            triple_cache[key] = make_triples(images, ids, priors[src], priors[tgt])
        return triple_cache[key]

    def train(preset, src, tgt, domain="A"):
        cfg = R3ANConfig.preset(preset, n_identities=args.r3an_identities, images_per_identity=args.r3an_images,
                                render_size=args.size, epochs=args.r3an_epochs, batch_size=args.batch_size,
                                g_width=args.g_width, e_width=args.e_width, e_repeats=(1, 1, 1, 1, 1),
                                d_width=args.d_width, e_activation=args.e_activation, checkpoint_every=100)
        folder = os.path.join(args.out, "r3an", f"{src}_to_{tgt}_{domain}_{preset}")
        if not finished(folder, cfg.to_dict(), LEGACY_CONFIG):
            print(f"== training {preset} {src} -> {tgt} on domain {domain}", flush=True)
            train_r3an(cfg, folder, device=dev, triples=triples(domain, src, tgt))
        return load_transform(os.path.join(folder, "model.pt"), dev)

    def score(model, src, tgt, mode="probe"):
        return cmfr_scores(feats[src], feats[tgt], probe_labels, lambda f: transform_features(model, f), mode)

    # 3. Table 3: ablations on one pair
    src, tgt = TABLE3_PAIR
    models = {}
    for preset in ABLATIONS:
        models[preset] = train(preset, src, tgt)
        results["table3"][preset] = score(models[preset], src, tgt)
        print(f"  {preset}: {results['table3'][preset]}", flush=True)
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(probe_images.shape[0], generator=g)[:12]
    reconstruction_figure(models["r3an"], feats[src]["probe"][pick], to_recon_images(probe_images[pick]),
                          os.path.join(args.out, "fig4_reconstructions.png"), columns=4)

    # Tables 5 and 6 (same models), Table 4 (domain B)
    usable = lambda pairs: [(a, b) for a, b in pairs if a in priors and b in priors]
    pairs5 = [] if args.quick else usable(TABLE5_PAIRS)
    for src, tgt in pairs5:
        key = f"{src}->{tgt}"
        fc, r3 = train("fc", src, tgt), train("r3an", src, tgt)
        results["table5"][key] = {"fc": score(fc, src, tgt), "r3an": score(r3, src, tgt)}
        results["table6"][key] = {"fc": score(fc, src, tgt, "gallery"), "r3an": score(r3, src, tgt, "gallery")}
        print(f"  {key}: {results['table5'][key]}", flush=True)
    for src, tgt in ([] if args.quick else usable(TABLE4_PAIRS)):
        key = f"{src}->{tgt}"
        results["table4"][key] = {d: {"fc": score(train("fc", src, tgt, d), src, tgt),
                                      "r3an": score(train("r3an", src, tgt, d), src, tgt)} for d in ("A", "B")}
    results["seconds"] = time.time() - t0
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    md = write_tables(results, args)
    with open(os.path.join(args.out, "r3an_results.md"), "w") as fh:
        fh.write(md)
    print(md)
    return 0


def finished(folder, config, absent=None):
    """True when folder holds a finished model.pt of this config (ValueError if of another one)."""
    path = os.path.join(folder, "model.pt")
    if not os.path.exists(path):
        return False
    state = load_checkpoint(path)
    check_same_config(state.get("train_config", state["config"]), config, path, absent)
    return True


@torch.no_grad()
def enc_all(encoder, images):
    from fastface.train.r3an import encode_images
    return encode_images(encoder, images)


def write_tables(r, args):
    pri = r["priors"]
    top = lambda d: d["top1"]
    out = [f"Settings: SynthFaces at {args.size} px; priors trained on {args.prior_identities} identities x "
           f"{args.prior_images} images for {args.prior_epochs} epochs; R³AN on {args.r3an_identities} x "
           f"{args.r3an_images} triples for {args.r3an_epochs} epochs (G width {args.g_width}, E width "
           f"{args.e_width}, D width {args.d_width}); evaluation: {args.probe_identities} held-out identities x "
           f"{args.probe_images} probe images, {args.distractors} distractors. Top-1 = identification rate "
           f"with distractors (%). This invocation took {r['seconds'] / 60:.1f} min (finished trainings are "
           f"reused from OUT).", "",
           "**Table 2 (prior models, own probe vs own gallery)**", "",
           markdown_table(["Network", "Top1", "P@1"], [[n, v["top1"], v["p_at_1"]] for n, v in pri.items()]), ""]
    s, t = TABLE3_PAIR
    marks = {"fc": "- - - -", "arch1": "x ✓ ✓ x", "arch2": "✓ x ✓ x", "arch3": "x x x ✓", "arch4": "x ✓ x ✓",
             "arch5": "x ✓ ✓ ✓", "arch6": "✓ x x ✓", "arch7": "x x ✓ ✓", "r3an": "✓ ✓ ✓ ✓"}
    out += [f"**Table 3 (ablations, {s} -> {t}; Rec:Adv Rec:L2 Rep:L2 Reg:L2)**", "",
            markdown_table(["Architecture", "Rec:Adv Rec:L2 Rep:L2 Reg:L2", "Top1", "P@1"],
                           [[k.upper() if k == "fc" else ("R³AN" if k == "r3an" else k.capitalize()), marks[k],
                             v["top1"], v["p_at_1"]] for k, v in r["table3"].items()]), ""]
    fc, r3 = r["table3"]["fc"]["top1"], r["table3"]["r3an"]["top1"]
    if fc < 1:
        change = 100 * (1 - (1 - r3) / (1 - fc))
        out += [f"Error rate: FC {100 * (1 - fc):.2f} %, R³AN {100 * (1 - r3):.2f} % (R³AN's is "
                f"{abs(change):.0f} % {'lower' if change >= 0 else 'higher'}; the paper reports ≈ 75 % lower).", ""]
    if r["table4"]:
        rows = []
        for key, d in r["table4"].items():
            a, b = key.split("->")
            for dom, name in (("A", "priors' identities"), ("B", "unseen identities")):
                rows.append([a, b, name, top(pri[a]), top(pri[b]), top(d[dom]["fc"]), top(d[dom]["r3an"])])
        out += ["**Table 4 (R³AN training-set domain)**", "",
                markdown_table(["Src", "Tgt", "Training set", "Src", "Tgt", "FC Tgt", "R³AN Tgt"], rows), ""]
    for table, title in (("table5", "Table 5 (CMFR among prior models, probe transformation)"),
                         ("table6", "Table 6 (CMFR with gallery transformation)")):
        if r[table]:
            rows = [[*key.split("->"), top(pri[key.split("->")[0]]), top(pri[key.split("->")[1]]), top(v["fc"]),
                     top(v["r3an"])] for key, v in r[table].items()]
            out += [f"**{title}**", "", markdown_table(["Src", "Tgt", "Src", "Tgt", "FC Tgt", "R³AN Tgt"], rows), ""]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
