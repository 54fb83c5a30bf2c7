"""The napari widgets (Qt). Each widget reads layers, calls ``napari_samtune.core`` and writes layers back."""
