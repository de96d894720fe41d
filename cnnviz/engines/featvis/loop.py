"""The optimization loop: run the model with the objective's layers recorded, and climb the objective
with Adam on the image parameters, through random transforms, logging the objective."""

from __future__ import annotations

import numpy as np
import torch

from ...errors import ParameterError
from ...layers import StopForward, map_view, record, require_maps, resolve_layer
from ...models import LoadedModel
from ..common import autocast, batch_memory_format, model_on_device, progress_bar, resolve_device
from .objectives import Context, Objective
from .param import make_param
from .regularizers import Regularizers
from .transforms import Transforms

class _Runner:
    """Evaluates an objective on a batch of images in [0, 1]."""

    def __init__(self, lm: LoadedModel, objective: Objective, example: torch.Tensor, device, amp: bool):
        self.lm = lm
        self.objective = objective
        self.device = device
        self.amp = amp
        # a channels-last or token layer is read as C x H x W maps (layers.require_maps), as elsewhere
        self.infos = [i if map_view(i.shape) is None else require_maps(i)
                      for i in (resolve_layer(lm.model, a, example) for a in objective.layers)]
        self.needs_logits = objective.logits
        p = lm.preprocessing
        self.mean = torch.tensor(p.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(p.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.memory_format = torch.contiguous_format

    def setup_memory_format(self, model, x: torch.Tensor) -> None:
        self.memory_format = batch_memory_format(model, ((x[:1] - self.mean) / self.std).detach())

    def __call__(self, model, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        inp = ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)
        logits = None
        with record(model, self.infos, stop=not self.needs_logits) as store, autocast(self.device, self.amp):
            try:
                out = model(inp)
                if self.needs_logits:
                    logits = out if isinstance(out, torch.Tensor) else out[0]
            except StopForward:
                pass
            acts = dict(store)
        return self.objective(Context(acts, logits, image))


def _optimize(lm: LoadedModel, objective: Objective, *, batch: int, size: tuple[int, int], steps: int, param: str,
              decorrelate: bool, transforms: Transforms, lr: float, regularizers: Regularizers,
              init: torch.Tensor | None, seed: int, log_every: int, device, amp: bool | None, progress,
              decay: float = 1.0, desc: str = "featvis"):
    """Gradient ascent with Adam on `objective`. Returns images (B x 3 x H x W in [0, 1], CPU), the
    logged steps, the objective per image at each logged step (step 0, the starting image, and the
    last step, the final image, untransformed; the steps between as seen through that step's random
    transforms) and the objective of the final image untransformed."""
    if steps < 1:
        raise ParameterError(f"steps {steps!r} must be at least 1")
    if lr <= 0:
        raise ParameterError(f"learning rate {lr!r} must be positive")
    if log_every < 1:
        raise ParameterError(f"log_every {log_every!r} must be at least 1")
    regularizers.check()
    if regularizers.active and (param != "pixel" or decorrelate):
        raise ParameterError("l2 decay, blur and clipping act on plain pixels: use param='pixel' without decorrelation")
    dev = resolve_device(device)
    amp = dev.type == "cuda" if amp is None else amp
    gen = torch.Generator().manual_seed(int(seed))
    h, w = size
    mean = torch.tensor(lm.preprocessing.mean, dtype=torch.float32)
    example = lm.preprocessing.normalize(np.full((h, w, 3), 128, np.uint8))
    runner = _Runner(lm, objective, example, dev, amp)
    with torch.inference_mode(False), torch.enable_grad(), model_on_device(lm.model, dev) as model:
        image_param = make_param(param, (batch, 3, h, w), mean, gen, dev, decorrelate, init, decay)
        opt = torch.optim.Adam(image_param.parameters(), lr=lr)
        runner.setup_memory_format(model, image_param.image())
        logged_steps, history = [], []
        with torch.no_grad():
            img0 = image_param.image()
            logged_steps.append(0)
            history.append(runner(model, img0, img0).detach().float().cpu())
        with progress_bar(steps, desc, progress, unit="step") as bar:
            for step in range(steps):
                img = image_param.image()
                x = transforms.apply(img, gen)
                values = runner(model, x, img)
                if step and step % log_every == 0:  # the image after `step` updates
                    logged_steps.append(step)
                    history.append(values.detach().float().cpu())
                loss = -values.sum()
                grads = torch.autograd.grad(loss, image_param.parameters())
                for p, g in zip(image_param.parameters(), grads):
                    p.grad = g
                opt.step()
                image_param.project()
                if regularizers.active:
                    regularizers.apply(image_param.p, step)
                    image_param.project()
                bar.update(1)
        with torch.no_grad():
            final_img = image_param.image().detach()
            final = runner(model, final_img, final_img).detach().float().cpu()
        logged_steps.append(steps)
        history.append(final)
    for p in image_param.parameters():
        p.grad = None
    return (final_img.float().cpu(), np.array(logged_steps, np.int32),
            torch.stack(history).numpy().astype(np.float32), final.numpy().astype(np.float32))


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return x.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
