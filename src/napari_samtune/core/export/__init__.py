"""Adapted models for other tools: BioImage.IO model packages (``bioimageio``)."""
