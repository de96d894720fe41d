"""The passes of `tcav` over images: what it reads (`read_inputs`, before the model is needed:
concept folders, the class images of DATA, the random pool and its sets), and `run`:

1. CAV runs (n = 1..N): the layers' activations of the concept images (computed once per process)
   and of the random sets R_n and Q_n (kept per pool image, so overlapping sets are read once); the
   concepts' CAVs against R_n and the random-vs-random CAV Q_n against R_n (`tcav.fit_cav`);
2. class chunks: each chunk of (image, class) items goes forward and back once; the gradient of
   each item's class logit at each layer is projected on every CAV and only the signs are kept.

Every batch is padded to full groups (`batching.pad`), so on a CPU an image's activations and
gradients do not depend on the batch it ran in, and a resumed run equals an uninterrupted one. With
`checkpoint` the state (the CAVs of the runs done, the signs of the chunks done) is written
atomically after every run and every chunk. Under torchrun rank r takes runs r, r + W, ... and
chunks r, r + W, ... (each with its own PATH.rankR); the CAVs are gathered between the phases and the
signs at the end, each from the rank that computed it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from ...batching import pad
from ...errors import ImageError, ParameterError, TargetError
from ...layers import StopForward, record
from ...results import provenance
from ..common import model_on_device, progress_bar, resolve_device
from . import tcav_core as T

PROGRESS_VERSION = 1


@dataclasses.dataclass
class Job:
    """What a TCAV run reads and fits, decided before any image goes through the model."""

    concepts: dict            # name -> (root, files)
    data_root: Path
    data_files: list[str]
    label_source: str
    classes: list[int]
    items: list[tuple[int, int]]  # (index into data_files, index into classes), grouped by class
    random_root: Path
    random_files: list[str]   # the pool's files that some set uses
    sets: np.ndarray          # 2N x R indices into random_files (R_1..R_N, Q_1..Q_N)
    pool_size: int
    random_from: str
    layers: list = None       # LayerInfos (resolved with the model)
    settings: dict = None
    alpha: float = 0.05
    seed: int = 0
    batch_size: int = 16
    data: str = ""


def _as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, int, np.integer)):
        value = str(value).split(",")
    return [str(v).strip() for v in value if str(v).strip()]


def read_inputs(data, concepts, classes, lm, *, random_runs: int = T.MIN_RUNS, random_from=None,
                random_size: int | None = None, seed: int = 0) -> Job:
    """Everything a run reads, checked in one line each: concept folders, DATA and its labels, the
    classes (names or indices of `lm`, which needs only `categories`/`class_index`: the command
    checks with the model's structure before loading its weights), the random pool and sets."""
    from ..audit.data import read_dataset
    from ..experiments.datasets import list_files

    found = T.check_concepts(concepts)
    ds = read_dataset(data, lm)
    wanted = _as_list(classes)
    if wanted:
        idx = []
        for c in wanted:
            k = lm.class_index(c)
            if k in idx:
                raise ParameterError(f"class {c!r} is named twice in --classes")
            idx.append(k)
    elif ds.has_labels:
        idx = sorted({int(v) for v in ds.labels if v >= 0})
        if len(idx) > T.MAX_DEFAULT_CLASSES:
            raise ParameterError(f"{str(data)!r} holds {len(idx)} labelled classes; name the ones to test with --classes "
                                 f"C1,C2 (at most {T.MAX_DEFAULT_CLASSES} are tested without it)")
    else:
        raise ParameterError(f"{str(data)!r} has no labels (class folders or a CSV label column): name the class its "
                             "images show with --classes (every image then counts for each class named)")
    items = []
    for k_i, k in enumerate(idx):
        rows = np.flatnonzero(ds.labels == k) if ds.has_labels else np.arange(len(ds.files))
        if not len(rows):
            raise TargetError(f"class {lm.class_name(k) if hasattr(lm, 'class_name') else k!r} has no images in "
                              f"{str(data)!r} ({ds.label_source}); name a class the data holds, or give its images")
        items.extend((int(r), k_i) for r in rows)
    source = data if random_from is None else random_from
    root, pool, _ = list_files(source)
    largest = max(len(f) for _, f in found.values())
    size = random_size if random_size is not None else min(largest, len(pool) // 2)
    if size < T.MIN_IMAGES or size > len(pool):
        need = size if random_size is not None else 2 * T.MIN_IMAGES
        raise ImageError(f"the random pool {str(source)!r} holds {len(pool)} image(s), random sets of "
                         f"{max(size, T.MIN_IMAGES)} need at least {need}; give more images or another folder "
                         "(random_from, --random-from)")
    sets = T.random_sets(len(pool), random_runs, size, seed)
    used = np.unique(sets)
    remap = {int(u): i for i, u in enumerate(used)}
    return Job(concepts=found, data_root=ds.root, data_files=ds.files, label_source=ds.label_source, classes=idx,
               items=items, random_root=Path(root), random_files=[pool[u] for u in used],
               sets=np.vectorize(remap.get)(sets).astype(np.int64), pool_size=len(pool),
               random_from="DATA" if random_from is None else str(random_from), seed=seed,
               data=str(data) if not isinstance(data, (list, tuple)) else "list")


def default_layer(lm):
    """The last block before the network's last convolution: Lite0's _blocks.15, ResNet's layer3.
    (Where the network is one Sequential, the last map before that convolution: VGG16's
    features.27.) Not the last convolutional block itself (Grad-CAM's layer), after which most CNNs only pool
    and apply a linear layer: there the class logit's gradient is the same for every image, so every
    image agrees in sign and each run's score is 0 or 1."""
    from ...layers import trace_layers

    infos = trace_layers(lm.model, torch.zeros(1, 3, *lm.input_size))
    maps = [i for i in infos if i.shape is not None and len(i.shape) == 3]
    convs = [i for i in infos if i.is_conv]
    if not convs or not maps:
        from ...layers import default_feature_layer

        return default_feature_layer(lm.model, torch.zeros(1, 3, *lm.input_size))
    last = convs[-1]
    names = {i.name for i in maps}
    outer = [i for i in maps if not any(i.name.startswith(n + ".") for n in names)]
    def done_before(i):
        return i.order < last.order and not last.name.startswith(i.name + ".")

    before = [i for i in outer if done_before(i)] or [i for i in maps if done_before(i)]  # nested: VGG's features.N
    return max(before, key=lambda i: i.order)


def plan(lm, data, concepts, classes, layers, *, random_runs, random_from, random_size, seed, settings, alpha,
         batch_size) -> Job:
    from ..units.features import resolve_layers

    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ParameterError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    job = read_inputs(data, concepts, classes, lm, random_runs=random_runs, random_from=random_from,
                      random_size=random_size, seed=seed)
    names = _as_list(layers)
    job.layers = resolve_layers(lm, names or [default_layer(lm).address])
    job.settings, job.alpha, job.batch_size = settings, alpha, int(batch_size)
    return job


# --------------------------------------------------------------------------------------------------
# the passes

def _read(lm, paths: list[Path]):
    """(readable positions, 1 x 3 x H x W tensors, skipped (file, reason))."""
    good, tensors, skipped = [], [], []
    for i, p in enumerate(paths):
        try:
            tensors.append(lm.prepare(p)[1])
            good.append(i)
        except ImageError as e:
            skipped.append((str(p), str(e)))
        except Exception as e:  # noqa: BLE001 - any decoder failure: skip and report
            skipped.append((str(p), f"cannot read {str(p)!r}: {type(e).__name__}: {e}"))
    return good, tensors, skipped


def activations(model, infos, x: torch.Tensor, dev) -> list[np.ndarray]:
    """Each layer's output for the images `x`, flattened (N x D float32), in padded batches."""
    with record(model, infos, stop=True) as store, torch.no_grad():
        try:
            model(pad(x).to(dev))
        except StopForward:
            pass
        return [store[i.address][: len(x)].detach().float().reshape(len(x), -1).cpu().numpy() for i in infos]


def gradients(model, infos, x: torch.Tensor, targets: torch.Tensor, dev) -> list[torch.Tensor]:
    """Per layer, the gradient of each image's `targets` logit at the layer's output (N x D)."""
    xp = pad(x).to(dev).requires_grad_(True)  # so that a frozen model's activations carry a graph too
    with record(model, infos) as store, torch.enable_grad():
        out = model(xp)
        picked = out[torch.arange(len(x), device=out.device), targets.to(out.device)].float().sum()
        grads = torch.autograd.grad(picked, [store[i.address] for i in infos])
    return [g[: len(x)].detach().float().reshape(len(x), -1).cpu() for g in grads]


class _Cache:
    """Activations per image, computed in batches of `batch` (padded: the same digits in any batch)."""

    def __init__(self, lm, model, infos, dev, batch: int):
        self.lm, self.model, self.infos, self.dev, self.batch = lm, model, infos, dev, batch
        self.values: dict = {}
        self.skipped: list = []

    def get(self, keys: list, paths: list[Path]) -> list:
        todo = [(k, p) for k, p in zip(keys, paths) if k not in self.values]
        for lo in range(0, len(todo), self.batch):
            part = todo[lo: lo + self.batch]
            good, tensors, bad = _read(self.lm, [p for _, p in part])
            self.skipped.extend(bad)
            for k, _ in part:
                self.values[k] = None
            if good:
                acts = activations(self.model, self.infos, torch.cat(tensors), self.dev)
                for j, g in enumerate(good):
                    self.values[part[g][0]] = [a[j] for a in acts]
        return [self.values[k] for k in keys]


def _stack(rows: list, layer: int, what: str, minimum: int) -> np.ndarray:
    kept = [r[layer] for r in rows if r is not None]
    if len(kept) < minimum:
        raise ImageError(f"{what}: {len(kept)} readable image(s), at least {minimum} needed; replace the unreadable "
                         "files or add images")
    return np.stack(kept)


def run(lm, job: Job, *, device="auto", checkpoint=None, resume=True, progress=None, on_step=None,
        finish=None) -> T.TcavResult:
    from ..units.topk import _dist_setup, drop_progress, finish_and_release, release_group, remove_stale_temporaries

    dev = resolve_device(device)
    names = list(job.concepts)
    C, N, L = len(names), len(job.sets) // 2, len(job.layers)
    rank, world, owns_group = _dist_setup()
    if dev.type == "cuda" and world > 1 and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    chunks = [list(range(lo, min(lo + job.batch_size, len(job.items)))) for lo in range(0, len(job.items), job.batch_size)]
    my_runs, my_chunks = list(range(rank, N, world)), list(range(rank, len(chunks), world))
    key_src = {"v": PROGRESS_VERSION, "model": lm.fingerprint() if checkpoint is not None else lm.identity(),
               "concepts": {n: [str(r), f] for n, (r, f) in job.concepts.items()}, "data": job.data_files,
               "items": job.items, "classes": job.classes, "random": [str(job.random_root), job.random_files],
               "sets": job.sets.tolist(), "layers": [i.address for i in job.layers], "settings": job.settings,
               "seed": job.seed, "batch": job.batch_size, "rank": rank, "world": world}
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True, default=str).encode()).hexdigest()
    seeds = T.fit_seeds(C, N, job.seed)
    state = {"runs_done": np.int64(0), "chunks_done": np.int64(0),
             "accuracy": np.full((C + 1, L, N), np.nan, np.float32),
             "signs": np.full((len(job.items), C + 1, L, N), -1, np.int8), "skipped": np.array("[]"),
             **{f"cav{li}": np.zeros((C + 1, N, int(np.prod(i.shape))), np.float32)
                for li, i in enumerate(job.layers)}}
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and world > 1:
        ckpt = ckpt.with_name(f"{ckpt.name}.rank{rank}")
    if ckpt is not None:
        remove_stale_temporaries(ckpt)
        if ckpt.exists():
            if resume:
                state = _load(ckpt, key, state, len(my_runs), len(my_chunks))
            else:
                drop_progress(ckpt)
    resumed = (int(state["runs_done"]), int(state["chunks_done"]))
    skipped = [tuple(v) for v in json.loads(str(state["skipped"]))]
    total = len(my_runs) + len(my_chunks)
    try:
        with model_on_device(lm.model, dev) as model, \
                progress_bar(total, "tcav", progress if rank == 0 else False, unit="step") as bar:
            bar.update(sum(resumed))
            cache = _Cache(lm, model, job.layers, dev, job.batch_size)
            if int(state["runs_done"]) < len(my_runs):
                concept_rows = {n: cache.get([("c", n, f) for f in files], [root / f for f in files])
                                for n, (root, files) in job.concepts.items()}
            for done in range(int(state["runs_done"]), len(my_runs)):
                n = my_runs[done]
                sets = [job.sets[N + n], job.sets[n]]
                rows = [cache.get([("r", int(j)) for j in s], [job.random_root / job.random_files[j] for j in s])
                        for s in sets]
                for li in range(L):
                    negative = _stack(rows[1], li, f"random set R_{n + 1}", T.MIN_IMAGES)
                    for c in range(C + 1):
                        positive = (_stack(concept_rows[names[c]], li, f"concept {names[c]!r}", T.MIN_IMAGES)
                                    if c < C else _stack(rows[0], li, f"random set Q_{n + 1}", T.MIN_IMAGES))
                        state[f"cav{li}"][c, n], state["accuracy"][c, li, n] = T.fit_cav(
                            positive, negative, seeds[c, n], job.settings)
                state["runs_done"] = np.int64(done + 1)
                state["skipped"] = np.array(json.dumps(_merged(skipped, cache.skipped)))
                _step(ckpt, key, state, bar, on_step, sum(map(int, (state["runs_done"], state["chunks_done"]))), total)
            skipped = _merged(skipped, cache.skipped)
            cavs, accuracy = [state[f"cav{li}"] for li in range(L)], state["accuracy"]
            if world > 1:
                cavs, accuracy = _gather_runs(cavs, accuracy, N, world)
            for done in range(int(state["chunks_done"]), len(my_chunks)):
                part = [job.items[i] for i in chunks[my_chunks[done]]]
                good, tensors, bad = _read(lm, [job.data_root / job.data_files[f] for f, _ in part])
                skipped = _merged(skipped, bad)
                if good:
                    targets = torch.as_tensor([job.classes[part[g][1]] for g in good])
                    grads = gradients(model, job.layers, torch.cat(tensors), targets, dev)
                    rows = np.asarray(chunks[my_chunks[done]])[good]
                    for li in range(L):
                        d = grads[li] @ torch.from_numpy(cavs[li].reshape(-1, cavs[li].shape[-1])).T
                        state["signs"][rows, :, li] = (d > 0).numpy().reshape(len(good), C + 1, N)
                state["chunks_done"] = np.int64(done + 1)
                state["skipped"] = np.array(json.dumps(skipped))
                _step(ckpt, key, state, bar, on_step, sum(map(int, (state["runs_done"], state["chunks_done"]))), total)
        signs = state["signs"]
        if world > 1:
            import torch.distributed as dist

            gathered: list = [None] * world
            dist.all_gather_object(gathered, (signs, skipped))
            owner = np.zeros(len(job.items), np.int64)
            for ci, chunk in enumerate(chunks):
                owner[chunk] = ci % world
            signs = np.stack([gathered[owner[i]][0][i] for i in range(len(job.items))]) if len(job.items) else signs
            skipped = sorted({tuple(v) for g in gathered for v in g[1]})
        result = _result(lm, job, names, cavs, accuracy, signs, seeds, skipped, dev, world, resumed)
    except BaseException:
        release_group(world, owns_group)
        raise
    return finish_and_release(result, finish, rank, world, owns_group, ckpt)


def _merged(a: list, b: list) -> list:
    out = [tuple(v) for v in a]
    out += [tuple(v) for v in b if tuple(v) not in set(out)]
    return out


def _step(ckpt, key, state, bar, on_step, done, total):
    if ckpt is not None:
        _save(ckpt, key, state)
    bar.update(1)
    if on_step is not None:
        on_step(done, total)


def _gather_runs(cavs, accuracy, runs, world):
    """Each run's CAVs and accuracies from the rank that fitted it (run n: rank n mod W)."""
    import torch.distributed as dist

    gathered: list = [None] * world
    dist.all_gather_object(gathered, (cavs, accuracy))
    cavs = [c.copy() for c in cavs]
    accuracy = accuracy.copy()
    for n in range(runs):
        g = gathered[n % world]
        for li in range(len(cavs)):
            cavs[li][:, n] = g[0][li][:, n]
        accuracy[:, :, n] = g[1][:, :, n]
    return cavs, accuracy


def _save(path: Path, key: str, state: dict) -> None:
    from ...files import atomic_path
    from ..units.topk import fault_pause

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, key=np.array(key), version=np.int64(PROGRESS_VERSION), **state)
        fault_pause("progress-write")


def _load(path: Path, key: str, empty: dict, runs: int, chunks: int) -> dict:
    """The state in progress file `path`, checked: every array with its dtype and shape, the counts
    within this run's; a file of other work or edited by hand fails in one line."""
    from ..units.topk import CheckpointError, read_progress

    data = read_progress(path, key, "a TCAV run", "or use --no-resume")
    fresh = "; delete it (or use --no-resume) to start over"
    out = {}
    for k, want in empty.items():
        got = data.get(k)
        if got is None or got.shape != np.shape(want) or got.dtype.kind != np.asarray(want).dtype.kind:
            raise CheckpointError(f"progress file {str(path)!r}: {k!r} is missing or does not fit this run{fresh}")
        out[k] = got.copy() if got.ndim else got
    if not (0 <= int(out["runs_done"]) <= runs and 0 <= int(out["chunks_done"]) <= chunks) or (
            int(out["chunks_done"]) and int(out["runs_done"]) != runs):
        raise CheckpointError(f"progress file {str(path)!r} counts steps this run does not have{fresh}")
    try:
        ok = all(isinstance(v, list) and len(v) == 2 for v in json.loads(str(out["skipped"])))
    except ValueError:
        ok = False
    if not ok:
        raise CheckpointError(f"progress file {str(path)!r} has a malformed 'skipped' field{fresh}")
    return out


def _result(lm, job, names, cavs, accuracy, signs, seeds, skipped, dev, world, resumed) -> T.TcavResult:
    from ...names import layer_name

    K, C, N, L = len(job.classes), len(names), len(job.sets) // 2, len(job.layers)
    scores = np.zeros((C + 1, K, L, N), np.float32)
    counts = np.zeros(K, np.int64)
    item_class = np.asarray([k for _, k in job.items], np.int64)
    readable = signs[:, 0, 0, 0] >= 0 if len(signs) else np.zeros(0, bool)
    for k in range(K):
        rows = signs[(item_class == k) & readable]
        counts[k] = len(rows)
        if not len(rows):
            raise ImageError(f"no image of class {lm.class_name(job.classes[k])!r} could be read; check the files")
        scores[:, k] = rows.mean(0)
    uniform = []  # per layer: every class's images agree in sign in every run (a gradient the same for all images)
    for li in range(L):
        agree = [bool((r.min(0) == r.max(0)).all()) for k in range(K)
                 if len(r := signs[(item_class == k) & readable][:, :, li]) >= 2]
        uniform.append(bool(agree) and all(agree))
    notes = [f"at {job.layers[li].address} every image of a class agrees in sign in every run, so each run's score is "
             "0 or 1: the class logit's gradient there hardly depends on the image (a pooling and linear head may "
             "follow the layer); choose an earlier layer" for li in range(L) if uniform[li]]
    stats = T.significance(scores, job.alpha)
    tests = stats.pop("tests")
    skipped_files = {f for f, _ in skipped}
    unreadable = [j for j, f in enumerate(job.random_files) if str(job.random_root / f) in skipped_files]
    sets = np.where(np.isin(job.sets, unreadable), -1, job.sets)
    params = {
        "concepts": names, "concept_folders": {n: str(r) for n, (r, _) in job.concepts.items()},
        "concept_counts_asked": [len(f) for _, f in job.concepts.values()],
        "classes": [int(k) for k in job.classes], "class_names": [lm.class_name(int(k)) for k in job.classes],
        "layers": [i.address for i in job.layers], "layer_types": [i.type for i in job.layers],
        "layer_labels": [layer_name(i.address, i.type) for i in job.layers],
        "layer_shapes": [list(i.shape) for i in job.layers], "data": job.data, "root": str(job.data_root),
        "label_source": job.label_source, "random_from": job.random_from, "random_root": str(job.random_root),
        "random_pool": job.pool_size, "random_size": int(job.sets.shape[1]), "random_runs": N,
        "random_design": "R_1..R_N and Q_1..Q_N drawn without replacement from the pool (sets may overlap); "
                         "concept runs: concept vs R_n; random runs: Q_n vs R_n (n = 1..N)",
        "classifier": {**job.settings, "features": "the layer's output flattened (C x H x W)",
                       "split": "rows (concept, then random) shuffled by random.Random(seed), the first "
                                "int(test_split x n) held out", "as": "captum.concept DefaultClassifier"},
        "score": "sign_count: share of the class's images whose class-logit gradient at the layer has a positive "
                 "dot product with the CAV", "test": "two-sided Student t-test (scipy.stats.ttest_ind) of the "
                 "concept's run scores against the random runs'", "correction": "Bonferroni", "tests": int(tests),
        "alpha": float(job.alpha), "seed": int(job.seed), "batch_size": job.batch_size, "world_size": world,
        "resumed_from": {"runs": resumed[0], "chunks": resumed[1]}, "uniform_signs": uniform, "notes": notes,
        "skipped": [f for f, _ in skipped], "skipped_reasons": [w for _, w in skipped]}
    concept_counts = np.asarray([len(f) - sum(str(r / x) in skipped_files for x in f)
                                 for r, f in job.concepts.values()], np.int64)
    return T.TcavResult(params=params, provenance=provenance(lm.identity(), str(dev)),
                        concepts=np.asarray(names, dtype=str), classes=np.asarray(job.classes, np.int64),
                        layers=np.asarray(params["layers"], dtype=str), scores=scores, cav_accuracy=accuracy,
                        class_counts=counts, concept_counts=concept_counts,
                        random_files=np.asarray(job.random_files, dtype=str), random_sets=sets, fit_seeds=seeds,
                        **stats)
