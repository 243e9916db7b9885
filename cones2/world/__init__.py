"""A measurable world: procedural shape scenes, a small SD-shaped model trained on them,
a classical detector and the evaluation harness (``benchmarks/eval_world.py``).

Submodules load on use; :mod:`cones2.world.scenes` and :mod:`cones2.world.detect` need
only numpy.
"""
