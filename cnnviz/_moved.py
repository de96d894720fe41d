"""Modules that moved when the engines were grouped by family (cnnviz 0.1, issue 26): the old
import paths keep working, with a DeprecationWarning naming the new one, through a finder on
`sys.meta_path` that hands out the module from its new place (the same module object, so a patch
made through either name is seen through both)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "cnnviz.engines.cams": "cnnviz.engines.attribution.cams",
    "cnnviz.engines.correspondence": "cnnviz.engines.experiments.correspondence",
    "cnnviz.engines.datasets": "cnnviz.engines.experiments.datasets",
    "cnnviz.engines.deconvnet": "cnnviz.engines.attribution.deconvnet",
    "cnnviz.engines.dependence": "cnnviz.engines.attribution.dependence",
    "cnnviz.engines.effective_rf": "cnnviz.engines.receptive_field.effective",
    "cnnviz.engines.empirical_rf": "cnnviz.engines.receptive_field.empirical",
    "cnnviz.engines.evolution": "cnnviz.engines.experiments.evolution",
    "cnnviz.engines.features": "cnnviz.engines.units.features",
    "cnnviz.engines.filters": "cnnviz.engines.units.filters",
    "cnnviz.engines.gradients": "cnnviz.engines.attribution.gradients",
    "cnnviz.engines.ig": "cnnviz.engines.attribution.ig",
    "cnnviz.engines.incremental": "cnnviz.engines.occlusion.incremental",
    "cnnviz.engines.incremental.drill": "cnnviz.engines.occlusion.incremental.drill",
    "cnnviz.engines.incremental.ops": "cnnviz.engines.occlusion.incremental.ops",
    "cnnviz.engines.incremental.regions": "cnnviz.engines.occlusion.incremental.regions",
    "cnnviz.engines.incremental.sweep": "cnnviz.engines.occlusion.incremental.sweep",
    "cnnviz.engines.invariance": "cnnviz.engines.experiments.invariance",
    "cnnviz.engines.lrp": "cnnviz.engines.attribution.lrp",
    "cnnviz.engines.methods": "cnnviz.engines.attribution.methods",
    "cnnviz.engines.neighbours": "cnnviz.engines.experiments.neighbours",
    "cnnviz.engines.patches": "cnnviz.engines.units.patches",
    "cnnviz.engines.probe": "cnnviz.engines.experiments.probe",
    "cnnviz.engines.sanity": "cnnviz.engines.attribution.sanity",
    "cnnviz.engines.scoremap": "cnnviz.engines.experiments.scoremap",
    "cnnviz.engines.semantics": "cnnviz.engines.units.semantics",
    "cnnviz.engines.simplify": "cnnviz.engines.experiments.simplify",
    "cnnviz.engines.targets": "cnnviz.engines.attribution.targets",
    "cnnviz.engines.topk": "cnnviz.engines.units.topk",
    "cnnviz.render.audit_html": "cnnviz.render.audit.html",
    "cnnviz.render.compare": "cnnviz.render.attribution.compare",
    "cnnviz.render.correspondence": "cnnviz.render.experiments.correspondence",
    "cnnviz.render.evolution": "cnnviz.render.experiments.evolution",
    "cnnviz.render.filters": "cnnviz.render.units.filters",
    "cnnviz.render.gradients": "cnnviz.render.attribution.gradients",
    "cnnviz.render.invariance": "cnnviz.render.experiments.invariance",
    "cnnviz.render.neighbours": "cnnviz.render.experiments.neighbours",
    "cnnviz.render.patches": "cnnviz.render.units.patches",
    "cnnviz.render.probe": "cnnviz.render.experiments.probe",
    "cnnviz.render.rf_compare": "cnnviz.render.receptive_field.compare",
    "cnnviz.render.sanity": "cnnviz.render.attribution.sanity",
    "cnnviz.render.scoremap": "cnnviz.render.experiments.scoremap",
    "cnnviz.render.semantics": "cnnviz.render.units.semantics",
    "cnnviz.render.simplify": "cnnviz.render.experiments.simplify",
    "cnnviz.rules": "cnnviz.engines.attribution.rules",
}


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        new = MOVED[module.__name__]
        warnings.warn(f"{module.__name__} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        # the import system returns what sys.modules holds under the name once this returns
        sys.modules[module.__name__] = importlib.import_module(new)


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
