"""The reference GeCA's state-dict layout (docs/REFERENCE.md §4.11-4.12), written out independently of our model."""

from __future__ import annotations

CHANNELS = 4
CLASSES = 11


def reference_layout(dim: int, mlp: int, hidden: int, classes: int = CLASSES, heads: int = 12) -> dict:
    """State-dict keys and shapes of the reference GeCA (docs/REFERENCE.md §4.11-4.12), as a function of its sizes."""
    update = 2 * CHANNELS + hidden
    return {
        "t_embedder.mlp.0.weight": (dim, 256),
        "t_embedder.mlp.0.bias": (dim,),
        "t_embedder.mlp.2.weight": (dim, dim),
        "t_embedder.mlp.2.bias": (dim,),
        "y_embedder.embedding_table.0.weight": (dim, classes),
        "y_embedder.embedding_table.0.bias": (dim,),
        "y_embedder.embedding_table.1.weight": (dim, dim),
        "y_embedder.embedding_table.1.bias": (dim,),
        "cell_to_embedding.weight": (dim, CHANNELS + update),
        "cell_to_embedding.bias": (dim,),
        "transformer.layers.0.0.norm.weight": (dim,),
        "transformer.layers.0.0.norm.bias": (dim,),
        "transformer.layers.0.0.fn.to_qkv.weight": (3 * heads * 64 if heads == 12 else 3 * dim, dim),
        "transformer.layers.0.0.fn.to_out.0.weight": (dim, dim),
        "transformer.layers.0.0.fn.to_out.0.bias": (dim,),
        "transformer.layers.0.1.norm.weight": (dim,),
        "transformer.layers.0.1.norm.bias": (dim,),
        "transformer.layers.0.1.fn.net.0.weight": (mlp, dim),
        "transformer.layers.0.1.fn.net.0.bias": (mlp,),
        "transformer.layers.0.1.fn.net.3.weight": (dim, mlp),
        "transformer.layers.0.1.fn.net.3.bias": (dim,),
        "transformer.adaLN_modulation.1.weight": (6 * dim, dim),
        "transformer.adaLN_modulation.1.bias": (6 * dim,),
        "final_layer.linear.weight": (update, dim),
        "final_layer.linear.bias": (update,),
        "final_layer.adaLN_modulation.1.weight": (2 * dim, dim),
        "final_layer.adaLN_modulation.1.bias": (2 * dim,),
    }
