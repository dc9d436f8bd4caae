"""Built-in pruners, each a hook plugin registered under its Distiller name in the ``hookprune.classes`` entry
points, exactly as a third party's class would be.

- :mod:`~hookprune.pruning.base`: :class:`~hookprune.pruning.base.Pruner`, when masks are computed and the
  pruner policy's own args; :mod:`~hookprune.pruning.checks`, argument checks that name their argument.
- :mod:`~hookprune.pruning.levels`: how much, when (fixed, per parameter, AGP, random range).
- which elements: :mod:`~hookprune.pruning.magnitude` (element magnitudes, thresholds),
  :mod:`~hookprune.pruning.ranked` (structures ranked by norm, gradient or chance),
  :mod:`~hookprune.pruning.activation`, :mod:`~hookprune.pruning.fm_reconstruction`,
  :mod:`~hookprune.pruning.global_magnitude`, :mod:`~hookprune.pruning.nm`, :mod:`~hookprune.pruning.splicing`,
  :mod:`~hookprune.pruning.baidu_rnn`; :mod:`~hookprune.pruning.structures`, the geometry of structures.
- :mod:`~hookprune.pruning.masking`: a pruner policy's masking options, for any pruner.
- :mod:`~hookprune.pruning.greedy`: Distiller's greedy filter pruning, a search over thinned copies of a model
  (a function, not a schedule class).
"""
