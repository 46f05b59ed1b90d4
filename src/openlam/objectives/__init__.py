"""Training objectives. Each is a module `loss, logs = objective(model, batch)` over the shared
PairBatch; composition is a weighted sum (`build_objective`). Objectives never load data and
models never know which objective trains them."""

from openlam.objectives.base import Composite, ObjectiveConfig, build_objective

__all__ = ["Composite", "ObjectiveConfig", "build_objective"]
