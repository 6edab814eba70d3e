"""Pure plotting functions (``plot_*(...) -> matplotlib Figure``), one module per notebook topic."""
