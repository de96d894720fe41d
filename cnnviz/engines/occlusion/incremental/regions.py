"""Changed regions of feature maps and how to read windows around them.

A `Patch` is the value of one feature map for a batch of occluder positions, stored as the
unoccluded map (`base`, 1xCxHxW, computed once) plus, per position b, a box of fixed size h x w at
(y[b], x[b]) holding that position's values there (`data`, BxCxhxw). Outside its box a position's
map equals `base`. The box contains the position's *changed* rows lo_y[b]..hi_y[b]-1 and columns
lo_x[b]..hi_x[b]-1 (half-open), tracked separately so that regions grow with the true projective
field, not with the box (which is the largest region of the batch, shifted to stay inside the map
near its borders: recomputing a few unchanged pixels is still exact).

A sliding-window layer (kernel k, stride s, dilation d, padding p before the map) changes output
row o when its input rows o*s - p .. o*s - p + (k-1)*d meet the changed rows [lo, hi):

    o_lo = ceil((lo + p - (k-1)*d) / s),   o_hi = floor((hi - 1 + p) / s) + 1,

clipped to the output. To recompute output rows a..a+h-1 it needs input rows a*s - p ..
(a+h-1)*s - p + (k-1)*d: a window gathered, per position, from the base input padded the way the
layer pads (zeros, or -inf for max pooling) with the position's patch pasted in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Patch:
    base: torch.Tensor  # 1xCxHxW, the unoccluded map
    data: torch.Tensor  # BxCxhxw, each position's values in its box
    y: torch.Tensor  # B, box top rows
    x: torch.Tensor  # B, box left columns
    lo_y: torch.Tensor  # B, first changed row
    hi_y: torch.Tensor  # B, one past the last changed row
    lo_x: torch.Tensor
    hi_x: torch.Tensor

    @property
    def size(self) -> tuple[int, int]:
        return int(self.data.shape[2]), int(self.data.shape[3])

    @property
    def map_size(self) -> tuple[int, int]:
        return int(self.base.shape[2]), int(self.base.shape[3])

    @property
    def covers_map(self) -> bool:
        return self.size == self.map_size

    def with_data(self, data: torch.Tensor, base: torch.Tensor) -> "Patch":
        """The same boxes and changed rows, new values (a pointwise layer's output)."""
        return Patch(base, data, self.y, self.x, self.lo_y, self.hi_y, self.lo_x, self.hi_x)


def floor_div(a: torch.Tensor, s: int) -> torch.Tensor:
    return torch.div(a, s, rounding_mode="floor")


def box(lo: torch.Tensor, hi: torch.Tensor, size: int) -> tuple[torch.Tensor, int]:
    """Starts and the one length (the longest changed interval, at least 1, at most `size`) of
    boxes holding every [lo, hi) inside 0..size-1."""
    length = max(1, min(size, int((hi - lo).max())))
    return lo.clamp(0, size - length), length


def slide(lo: torch.Tensor, hi: torch.Tensor, k: int, s: int, d: int, p: int, out: int):
    """Changed output interval [o_lo, o_hi) of a sliding window for changed input [lo, hi)."""
    reach = (k - 1) * d
    o_lo = (-floor_div(-(lo + p - reach), s)).clamp(0, out)
    o_hi = (floor_div(hi - 1 + p, s) + 1).clamp(0, out)
    return o_lo, torch.maximum(o_hi, o_lo)


class Source:
    """A base map (padded) as rows of pixels, HsxWs rows of C values, followed by room for one
    batch of patches, so that a window with its patch pasted is one `index_select`."""

    def __init__(self, base_hwc: torch.Tensor):
        self.hs, self.ws, self.c = base_hwc.shape
        self.rows = self.hs * self.ws
        self.buf = base_hwc.reshape(self.rows, self.c)

    def with_patch(self, patch: "Patch") -> torch.Tensor:
        """The buffer with `patch`'s values (B*h*w rows, channels last) after the base rows."""
        values = patch.data.permute(0, 2, 3, 1).reshape(-1, self.c)
        need = self.rows + values.shape[0]
        if self.buf.shape[0] < need or self.buf.dtype != values.dtype:
            buf = torch.empty((need, self.c), dtype=values.dtype, device=self.buf.device)
            buf[: self.rows] = self.buf[: self.rows]
            self.buf = buf
        self.buf[self.rows: need] = values
        return self.buf[:need]


def gather(src: Source, patch: Patch, offset: tuple[int, int], wy: torch.Tensor, wx: torch.Tensor,
           lh: int, lw: int) -> torch.Tensor:
    """Windows lh x lw at (wy[b], wx[b]) of `src` (the patch's base, padded with `offset` = (top,
    left) rows/columns before it), each with position b's patch pasted in; returned as
    BxCxlhxlw in the channels-last layout."""
    dev = wy.device
    b = wy.numel()
    rows = wy[:, None] + torch.arange(lh, device=dev)  # B x lh
    cols = wx[:, None] + torch.arange(lw, device=dev)
    ph, pw = patch.size
    ry = rows - (patch.y[:, None] + offset[0])
    rx = cols - (patch.x[:, None] + offset[1])
    iny, inx = (ry >= 0) & (ry < ph), (rx >= 0) & (rx < pw)
    mask = iny[:, :, None] & inx[:, None, :]
    in_base = rows[:, :, None] * src.ws + cols[:, None, :]
    in_patch = (src.rows + (torch.arange(b, device=dev)[:, None, None] * ph + ry.clamp(0, ph - 1)[:, :, None]) * pw
                + rx.clamp(0, pw - 1)[:, None, :])
    index = torch.where(mask, in_patch, in_base).reshape(-1)
    out = src.with_patch(patch).index_select(0, index).reshape(b, lh, lw, src.c)
    return out.permute(0, 3, 1, 2)


def hwc(t: torch.Tensor) -> torch.Tensor:
    """1xCxHxW to a contiguous HxWxC."""
    return t[0].permute(1, 2, 0).contiguous()


def materialize(patch: Patch, src: Source) -> torch.Tensor:
    """Every position's whole map, BxCxHxW (channels last): the base (`src`, unpadded) with the
    patch pasted."""
    if patch.covers_map:
        return patch.data
    h, w = patch.map_size
    zero = torch.zeros_like(patch.y)
    return gather(src, patch, (0, 0), zero, zero, h, w)


def regather(patch: Patch, src: Source, y: torch.Tensor, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The positions' values in boxes h x w at (y, x) inside the map (BxCxhxw)."""
    if (h, w) == patch.size and torch.equal(y, patch.y) and torch.equal(x, patch.x):
        return patch.data
    return gather(src, patch, (0, 0), y, x, h, w)
