"""dynorm's numeric side: the generated PyTorch layers, experiments and benchmarks.

Needs torch (and numpy); never imports SymPy.
"""
