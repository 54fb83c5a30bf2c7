"""The napari-samtune library: SAM models, cached embeddings, prompting, metrics and adaptation. No GUI imports."""
