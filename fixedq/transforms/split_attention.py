"""Rewrite: Keras ``MultiHeadAttention`` as the layers it is made of, so ``quantize`` takes it
directly: ``Dense`` query/key/value projections (``<name>_q``/``_k``/``_v``, kernels reshaped
from ``(D, H, d)`` to ``(D, H*d)``, same head layout), fixedq's ``Attention(num_heads,
softmax="softmax")`` (``<name>``: the same scaled dot-product softmax attention, integer path
eq. 30b) and a ``Dense`` output projection (``<name>_out``). The float function is unchanged
(to float rounding); attention dropout is the identity at inference.

Calls it cannot rewrite stay a ``MultiHeadAttention`` (``quantize`` then keeps it in float with
a warning naming :func:`unsupported_reason`): masks or ``return_attention_scores``,
``value_dim != key_dim``, ``output_shape``, ``attention_axes`` other than the sequence axis,
``use_gate``, ``sliding_window``, inputs not of rank 3.

Example:
    >>> import keras
    >>> from fixedq.transforms.graph import read_graph
    >>> x = keras.Input((4, 8), name="x")
    >>> m = keras.Model(x, keras.layers.MultiHeadAttention(2, 4, name="mha")(x, x))
    >>> g = read_graph(m)
    >>> [c.layers for c in split_attention(g)]
    [('mha_q', 'mha_k', 'mha_v', 'mha', 'mha_out')]
    >>> [n.cls.__name__ for n in g.nodes]
    ['InputLayer', 'Dense', 'Dense', 'Dense', 'Attention', 'Dense']
"""

from __future__ import annotations

import keras

from fixedq.layers.transformers.float_layers import Attention
from fixedq.transforms.graph import Graph, GraphNode, Ref
from fixedq.transforms.report import Change

__all__ = ["split_attention", "unsupported_reason"]

NAME = "split_attention"
_ROLES = ("query", "value", "key")


def _operands(node: GraphNode) -> dict | None:
    """``{"query", "value", "key"}`` references of a plain call, else ``None``."""
    found = dict(zip(_ROLES, node.args, strict=False))
    for role, value in node.kwargs.items():
        if role in _ROLES:
            found[role] = value
        elif value is not None and value is not False:
            return None  # a mask, return_attention_scores=True, use_causal_mask=True, ...
    if not all(isinstance(found.get(r), Ref) for r in ("query", "value")):
        return None
    found.setdefault("key", found["value"])
    return found if isinstance(found["key"], Ref) else None


def unsupported_reason(node: GraphNode, graph: Graph) -> str | None:
    """Why this ``MultiHeadAttention`` call is not rewritten (``None``: it is).

    Example:
        >>> import keras
        >>> from fixedq.transforms.graph import read_graph
        >>> x = keras.Input((4, 8))
        >>> mha = keras.layers.MultiHeadAttention(2, 4, value_dim=2, name="mha")
        >>> g = read_graph(keras.Model(x, mha(x, x)))
        >>> unsupported_reason(g.node("mha"), g)
        'value_dim 2 != key_dim 4'
    """
    cfg = node.config
    if _operands(node) is None:
        return "a mask, return_attention_scores or a causal mask"
    value_dim = cfg.get("value_dim") or cfg["key_dim"]
    if int(value_dim) != int(cfg["key_dim"]):
        return f"value_dim {value_dim} != key_dim {cfg['key_dim']}"
    if cfg.get("output_shape") not in (None, [], ()):
        return f"output_shape {cfg['output_shape']!r}"
    if cfg.get("attention_axes") not in (None, [1], (1,), 1):
        return f"attention_axes {cfg['attention_axes']!r} (only the sequence axis)"
    if cfg.get("use_gate"):
        return "use_gate=True"
    if cfg.get("sliding_window") is not None:
        return f"sliding_window {cfg['sliding_window']!r}"
    ops_ = _operands(node)
    shapes = [graph.node(ops_[r].name).output_shapes[ops_[r].index] for r in _ROLES]
    if any(len(s) != 3 for s in shapes):
        return f"inputs of shapes {shapes} (rank 3, (batch, tokens, channels), only)"
    return None


def split_attention(graph: Graph) -> list[Change]:
    """Rewrite every supported ``MultiHeadAttention`` call of ``graph`` (in place)."""
    changes = []
    for node in list(graph.nodes):
        if node.cls is not keras.layers.MultiHeadAttention or unsupported_reason(node, graph):
            continue
        cfg, refs = node.config, _operands(node)
        heads, key_dim = int(cfg["num_heads"]), int(cfg["key_dim"])
        width, bias = heads * key_dim, bool(cfg.get("use_bias", True))
        weights = [w for _, w in node.weights]
        per = 2 if bias else 1
        q_shape = graph.node(refs["query"].name).output_shapes[refs["query"].index]
        out_dim = int(q_shape[-1])
        dtype = cfg.get("dtype")
        new = []
        for i, (part, role) in enumerate((("q", "query"), ("k", "key"), ("v", "value"))):
            name = graph.unique_name(f"{node.name}_{part}")
            w = [("kernel", weights[per * i].reshape(-1, width))]
            if bias:
                w.append(("bias", weights[per * i + 1].reshape(width)))
            ref = refs[role]
            shape = graph.node(ref.name).output_shapes[ref.index]
            layer = keras.layers.Dense(width, use_bias=bias, name=name, dtype=dtype)
            new.append(GraphNode(name, keras.layers.Dense, layer.get_config(), w,
                                 (Ref(ref.name, ref.index),), {},
                                 [(*shape[:-1], width)], node.dtype))
        att = Attention(heads, softmax="softmax", name=node.name, dtype=dtype)
        out_name = graph.unique_name(f"{node.name}_out")
        new.append(GraphNode(node.name, Attention, att.get_config(), [],
                             ([Ref(n.name) for n in new],), {}, [(*q_shape[:-1], width)],
                             node.dtype))
        w = [("kernel", weights[3 * per].reshape(width, out_dim))]
        if bias:
            w.append(("bias", weights[3 * per + 1].reshape(out_dim)))
        out = keras.layers.Dense(out_dim, use_bias=bias, name=out_name, dtype=dtype)
        new.append(GraphNode(out_name, keras.layers.Dense, out.get_config(), w,
                             (Ref(node.name),), {}, node.output_shapes, node.dtype))
        graph.redirect(node.name, out_name, skip=(out_name,))
        index = graph.nodes.index(node)
        graph.nodes[index:index + 1] = new
        changes.append(Change(NAME, tuple(n.name for n in new),
                              f"MultiHeadAttention({heads} heads) as Dense q/k/v + "
                              "Attention(softmax) + Dense"))
    return changes
