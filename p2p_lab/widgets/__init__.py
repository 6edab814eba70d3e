"""ipywidgets UIs (``make_*_ui(...)``) wired to the pure plotting functions in ``p2p_lab.viz``."""
