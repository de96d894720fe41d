"""`cnnviz audit`: one report of how a model does on a data set and where it looks.

`audit(lm, data, ...)` (engine.py) returns an `AuditResult` (result.py); its numbers are the small
functions of metrics.py; its running state, the torchrun merge and the progress file are
state.py; the data set and its labels are read by data.py; the static HTML report
is written by `cnnviz.render.audit.html`.
"""

from .engine import DEFAULT_METHODS, audit, check_methods
from .result import AuditResult

__all__ = ["audit", "AuditResult", "DEFAULT_METHODS", "check_methods"]
