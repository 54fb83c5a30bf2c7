"""Automatic fine-tuning: the best configuration that fits a time budget.

``space`` (what can be chosen), ``features`` and ``predictors`` (what the meta-knowledge predicts from), ``knowledge``
(the shipped meta-knowledge file), ``trial`` (one resumable configuration) and ``search`` (``auto_fine_tune``).
"""

from .knowledge import MetaKnowledge, MetaKnowledgeError, load_meta_knowledge
from .search import AutoSettings, auto_fine_tune
from .space import RUNGS, Configuration, SearchSpace

__all__ = [
    "RUNGS",
    "AutoSettings",
    "Configuration",
    "MetaKnowledge",
    "MetaKnowledgeError",
    "SearchSpace",
    "auto_fine_tune",
    "load_meta_knowledge",
]
