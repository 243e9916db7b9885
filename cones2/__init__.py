"""cones2: Cones 2 subject residuals, layout-guided sampling and a subject registry."""

__version__ = "0.1.0"
