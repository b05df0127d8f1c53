"""MLP Memory (Wei et al., ICLR 2026, arXiv 2508.01832): a retriever-pretrained all-MLP memory mixed into the
backbone's next-token distribution. ``method=mlp_memory``; pre-training: ``python -m harness.train method=mlp_memory``."""
from methods.mlp_memory.method import MLPMemory

__all__ = ["MLPMemory"]
