"""Training, calibration and evaluation recipes for the lung-opacity app (see docs/training.md).

Nothing here is imported by the app: the recipes produce model folders in the app's formats and
re-use the app's preprocessing (``operators.lib.preprocessing``, ``operators.lib.segmenters``).
"""
