"""Glue between napari layers and ``napari_samtune.core``: reading prompts from layers and writing results back.

Functions here take layer objects and numpy arrays and do no computing of their own; the widgets in ``_qt`` call
them, and tests call them without a viewer.
"""
