"""Receptive fields three ways.

  theory.py     the theoretical field of every layer from the graph (size, stride, padding; no weights)
  effective.py  the effective field: where the gradient of a unit reaches the input (Luo et al. 2016)
  empirical.py  the empirical field: where occluding the image changes a unit (Zhou et al. 2015)

`theory` imports nothing of the other two; both import `theory`.
"""

from .effective import EffectiveRF, effective_receptive_field  # noqa: F401 (the old import path)
from .empirical import EmpiricalRF, empirical_receptive_field  # noqa: F401
from .theory import RFInfo, UnsupportedOp, format_table, receptive_field, receptive_fields  # noqa: F401
