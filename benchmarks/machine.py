"""What the benchmarks print about the machine they ran on."""

import contextlib
import os
import platform
from pathlib import Path


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def sample_images() -> Path:
    """images/ of the ImageNet sample: $CNNVIZ_IMAGENET_SAMPLE, else beside the checkout
    (../shared/data/imagenet-sample), else /work/shared/data/imagenet-sample."""
    env = os.environ.get("CNNVIZ_IMAGENET_SAMPLE")
    candidates = ([Path(env)] if env else []) + [
        Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample",
        Path("/work/shared/data/imagenet-sample")]
    return next((c for c in candidates if (c / "images").is_dir()), candidates[0]) / "images"
