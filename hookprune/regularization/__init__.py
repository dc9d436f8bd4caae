"""Built-in regularizers, Distiller's by name: L1, group lasso, group variance and drop-filter.

``L1Regularizer``, ``GroupLassoRegularizer`` and ``GroupVarianceRegularizer`` keep Distiller's
``loss(param, param_name, regularizer_loss, zeros_mask_dict)`` and ``threshold(param, param_name,
zeros_mask_dict)`` methods, which a regularizer policy calls; ``DropFilterRegularizer`` acts through
hooks. Each is registered under its Distiller name in the ``hookprune.classes`` entry points.
"""

from hookprune.regularization.drop_filter import DropFilterRegularizer
from hookprune.regularization.group_lasso import GroupLassoRegularizer, GroupVarianceRegularizer
from hookprune.regularization.l1 import L1Regularizer

__all__ = ["DropFilterRegularizer", "GroupLassoRegularizer", "GroupVarianceRegularizer", "L1Regularizer"]
