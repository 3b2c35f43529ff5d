"""MONAI Deploy operators of the lung-opacity pipeline: one operator per file.

Pure logic lives in :mod:`operators.lib` (no holoscan import, fast to test) and network
architectures in :mod:`operators.nets`.
"""
