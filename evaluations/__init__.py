"""Offline, TF-faithful sample-quality evaluator (FID, sFID, Inception Score, precision, recall).

Modules: ``inception`` (TF Inception-v3 2015-12-05 in PyTorch), ``metrics`` (the math),
``evaluator`` (CLI ``python evaluations/evaluator.py REF.npz SAMPLE.npz`` and the Python API).
See evaluations/README.md. Importing this package imports nothing heavy.
"""
