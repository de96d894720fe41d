"""Score-CAM speed: cnnviz against pytorch-grad-cam's ScoreCAM on one image, same layer, one process.

In interleaved rounds (round r runs each contender once, in a rotated order, so that a slow spell
of a shared machine hits all alike), on EfficientNet-Lite0 (real weights) and one photo at 224 px:

  cnnviz scorecam       cnnviz.attribute(lm, PATH, "scorecam", layer=L): the whole call from the
                        image file (SCORECAM_BATCH = 16 masked copies per forward pass, channels_last);
  grad-cam ScoreCAM     pytorch_grad_cam.ScoreCAM(model, [module L]) on the prepared tensor, target
                        the top-1 class (its default batch: 16 masked copies per pass; it builds
                        all masked copies at once and prints a tqdm bar, sent to /dev/null here);
  cnnviz scorecam k=K   (--max-channels K) the approximation over the K channels of largest mean;
  cnnviz rise M         (--rise-masks M, 0 to skip) RISE with M masks, for reference: its time per
                        mask is comparable with Score-CAM's time per channel.

The layer must be a module called once per forward pass (pytorch-grad-cam records every call of a
hooked module and uses the first): the default `_conv_head` (1280 channels), the input of the head's
batch norm and ReLU6. The two define the weights differently (cnnviz: the class's softmax
probability of each masked image, as the authors' code; pytorch-grad-cam: a softmax over channels
of the class logits; it also upsamples with align_corners=True), so the maps' Spearman correlation
is printed for information, not as a check. The time is the same work: one forward pass per
channel, plus one.

    python benchmarks/cams.py [--layer _conv_head] [--rounds 2] [--max-channels 128] [--rise-masks 500]
                              [--image PATH]

Measured (2026-12-07, AMD EPYC, 2 cores, under /work/bin/heavy --quiet, no other heavy job; 2 rounds,
medians; the photo 000_n01440764.jpg, layer _conv_head, 1280 channels):

| contender | median s | per channel / mask ms | vs grad-cam ScoreCAM |
|---|---|---|---|
| cnnviz scorecam | 38.07 | 29.7 | 0.636 |
| grad-cam ScoreCAM | 59.89 | 46.8 | 1.000 |
| cnnviz scorecam k=128 | 4.81 | 37.6 | 0.080 |
| cnnviz rise 500 | 17.30 | 34.6 | 0.289 |

cnnviz / pytorch-grad-cam = 0.64 (rounds: 32.2 / 60.6 s and 44.0 / 59.2 s): the same batch of 16
masked copies, but in the channels_last layout (batches of 32 in the plain layout, cnnviz's earlier
setting, ran 1.7x slower per copy than 16 here). RISE's 2000 default masks then take about 70 s, the
full Score-CAM on this layer about 40 s. Spearman of the maps: cnnviz vs pytorch-grad-cam 0.910
(their weights differ by definition), cnnviz over the 128 largest-mean channels vs all 0.782.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch

from machine import cpu_model, sample_images  # benchmarks/ is on sys.path when run as a script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layer", default="_conv_head")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-channels", type=int, default=128)
    ap.add_argument("--rise-masks", type=int, default=500)
    ap.add_argument("--image", default=None)
    args = ap.parse_args()

    import numpy as np
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from scipy.stats import spearmanr

    import cnnviz

    image = args.image or str(sorted(sample_images().glob("*.jpg"))[0])
    lm = cnnviz.load_model("efficientnet_lite0")
    model = lm.model.eval()
    x = lm.prepare(image, geometry=True)[1]
    with torch.no_grad():
        top1 = int(model(x).argmax(1))
    module = dict(model.named_modules())[args.layer]
    calls = []
    h = module.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    with torch.no_grad():
        model(x)
    h.remove()
    assert len(calls) == 1, f"{args.layer} is called {len(calls)} times per pass; pick a layer called once"
    channels = calls[0][1]

    def ours():
        return cnnviz.attribute(lm, image, "scorecam", layer=args.layer, progress=False, device="cpu").map[0]

    def ours_k():
        return cnnviz.attribute(lm, image, "scorecam", layer=args.layer, max_channels=args.max_channels,
                                progress=False, device="cpu").map[0]

    def peer():
        with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
            with ScoreCAM(model=model, target_layers=[module]) as cam:
                return cam(input_tensor=x, targets=[ClassifierOutputTarget(top1)])[0]

    def rise():
        return cnnviz.attribute(lm, image, "rise", masks=args.rise_masks, progress=False, device="cpu").map[0]

    contenders = {"cnnviz scorecam": ours, "grad-cam ScoreCAM": peer}
    if args.max_channels and args.max_channels < channels:
        contenders[f"cnnviz scorecam k={args.max_channels}"] = ours_k
    if args.rise_masks:
        contenders[f"cnnviz rise {args.rise_masks}"] = rise
    names = list(contenders)
    times = {n: [] for n in names}
    maps = {}
    print(f"machine: {cpu_model()}, {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"EfficientNet-Lite0, {image.rsplit('/', 1)[-1]}, layer {args.layer} ({channels} channels), "
          f"top-1 {top1}")
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            maps[n] = contenders[n]()
            times[n].append(time.perf_counter() - t0)
            print(f"  round {r + 1}: {n}: {times[n][-1]:.2f} s", flush=True)
    base = statistics.median(times["grad-cam ScoreCAM"])
    print(f"\n| contender | median s | per channel / mask ms | vs grad-cam ScoreCAM |\n|---|---|---|---|")
    for n in names:
        med = statistics.median(times[n])
        work = (args.rise_masks if "rise" in n else args.max_channels if "k=" in n else channels)
        print(f"| {n} | {med:.2f} | {1000 * med / work:.1f} | {med / base:.3f} |")
    a = np.asarray(maps["cnnviz scorecam"], dtype=np.float64)
    b = np.asarray(maps["grad-cam ScoreCAM"], dtype=np.float64)
    print(f"\nSpearman(cnnviz map, grad-cam map) = {spearmanr(a.ravel(), b.ravel())[0]:.3f} (different weight "
          "definitions: for information)")
    if len(names) > 2 and "k=" in names[2]:
        k = np.asarray(maps[names[2]], dtype=np.float64)
        print(f"Spearman(cnnviz k={args.max_channels}, cnnviz all) = {spearmanr(k.ravel(), a.ravel())[0]:.3f}")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
