"""Built-in regularizers, Distiller's by name: L1, group lasso, group variance and drop-filter.

Each is a hook plugin: ``L1Regularizer``, ``GroupLassoRegularizer`` and ``GroupVarianceRegularizer`` derive
from :class:`~hookprune.regularization.base.Regularizer` (a penalty per parameter, optional thresholding);
``DropFilterRegularizer`` drops filters from forward passes. Each is registered under its Distiller name in the
``hookprune.classes`` entry points.
"""

from hookprune.regularization.base import Regularizer
from hookprune.regularization.drop_filter import DropFilterRegularizer
from hookprune.regularization.group_lasso import GroupLassoRegularizer, GroupVarianceRegularizer
from hookprune.regularization.l1 import L1Regularizer

__all__ = ["DropFilterRegularizer", "GroupLassoRegularizer", "GroupVarianceRegularizer", "L1Regularizer", "Regularizer"]
