"""Building the bundled model (``samtune_small``): the pretraining recipe and its data. Not needed at run time.

``recipe``: the resumable training loop, its configurations (v1: procedural scenes; v2: procedural scenes mixed with
the real images of ``shared/pretrain_corpus``) and the held-out evaluations logged along the run; ``corpus``: reading
the real-image corpus and cutting training frames from it.
"""
