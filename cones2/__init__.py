"""cones2: Cones 2 subject residuals, layout-guided sampling and a subject registry."""

from ._quiet import install_filters as _install_filters

__version__ = "0.1.0"

_install_filters()
