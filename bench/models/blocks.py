"""Cut points, blocks and unfreezing: depth counts blocks, not layers.

A cut point is a layer that every path from the input to the output passes through. Freezing
"everything up to a cut point" is well defined for any functional backbone (no residual branch
is half frozen), compares across backbones, and is exactly where frozen features can be cached.

Runs of single-path layers make every one of their layers a cut, so a *block* is the span up to
the next cut that ends a residual/concat merge or a stage (see ``is_block_end``); a span that
holds no weights (the ReLU after a ResNet ``_add``) joins the block before it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras

from bench.errors import ConfigError

# --- the graph -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Graph:
    """The model's call graph as calls (nodes) in a topological order, edges as positions."""

    nodes: list[Any]  # keras.src.ops.node.Node: one call of an operation
    edges: list[tuple[int, int]]

    @property
    def ops(self) -> list[keras.Operation]:
        return [node.operation for node in self.nodes]


def _graph(model: keras.Model) -> _Graph:
    """Walk back from the model's output through the Keras call history.

    Keras 3 records, for every symbolic tensor, the call (``Node``) that produced it; a node's
    ``parent_nodes`` are the calls that produced its inputs. Walking from the output visits only
    the calls that belong to *this* model (a layer reused elsewhere has other nodes, not reached).
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            f"cut points need a single-input, single-output functional model; {model.name!r} has "
            f"{len(model.inputs)} inputs and {len(model.outputs)} outputs"
        )
    history = model.outputs[0]._keras_history
    out_node = history.operation._inbound_nodes[history.node_index]

    parents: dict[int, list[int]] = {}
    nodes: dict[int, object] = {}
    stack = [out_node]
    while stack:
        node = stack.pop()
        if id(node) in nodes:
            continue
        nodes[id(node)] = node
        parents[id(node)] = [id(p) for p in node.parent_nodes]
        stack.extend(node.parent_nodes)

    # Kahn's algorithm; ties broken by first visit so the order is deterministic.
    children: dict[int, list[int]] = {k: [] for k in nodes}
    for k, ps in parents.items():
        for p in ps:
            children[p].append(k)
    indegree = {k: len(ps) for k, ps in parents.items()}
    ready = [k for k in nodes if indegree[k] == 0]
    order: list[int] = []
    while ready:
        k = ready.pop()
        order.append(k)
        for c in children[k]:
            indegree[c] -= 1
            if indegree[c] == 0:
                ready.append(c)
    # Sources other than the model input (constants) lie on no input->output path, and would
    # wrongly "jump over" real cut points; drop them and everything only they feed.
    input_node_ids = {id(t._keras_history.operation._inbound_nodes[0]) for t in model.inputs}
    reachable = set(input_node_ids)
    for k in order:
        if any(p in reachable for p in parents[k]):
            reachable.add(k)
    order = [k for k in order if k in reachable]
    pos = {k: i for i, k in enumerate(order)}
    edges = [(pos[p], pos[k]) for k in order for p in parents[k] if p in pos]
    return _Graph(nodes=[nodes[k] for k in order], edges=edges)


def _cut_positions(graph: _Graph) -> list[int]:
    # In a topological order, v is on every input->output path iff no edge u->w jumps over it
    # (pos u < pos v < pos w): such an edge gives a path around v, and without one every path
    # must step on v. A difference array counts the jumping edges at each position in O(V + E).
    cover = [0] * (len(graph.ops) + 1)
    for u, w in graph.edges:
        if w > u + 1:
            cover[u + 1] += 1
            cover[w] -= 1
    cuts, running = [], 0
    for i in range(len(graph.ops)):
        running += cover[i]
        if running == 0:
            cuts.append(i)
    return cuts


def cut_points(model: keras.Model) -> list[str]:
    """Names of the layers every input->output path passes through, in topological order.

    The input layer is left out: cutting there freezes nothing.
    """
    graph = _graph(model)
    return [
        graph.ops[i].name
        for i in _cut_positions(graph)
        if not isinstance(graph.ops[i], keras.layers.InputLayer)
    ]


# --- block ends ------------------------------------------------------------------------------

# A cut point ends a block if one of these rules says so (given the operation and how many
# inputs it merges). Merges end residual / dense units: matched by class name because Keras 3
# models mix merge *layers* (`layers.Add`) with merge *ops* (ConvNeXt's `x + y` is a
# `keras.src.ops.numpy.Add`). Squeeze-excite `Multiply` is deliberately not a merge: it sits in
# the middle of an MBConv unit. The name patterns are the stage outputs the applications name.
_MERGE_CLASSES = {"Add", "Concatenate"}
_POOL_TYPES = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
_STAGE_NAME = re.compile(r"(_out|_add|_concat|_pool|^pool\d+|^mixed\d+)$")

BLOCK_END_RULES: dict[str, Callable[[keras.Operation, int], bool]] = {
    "merge": lambda op, n_in: n_in >= 2 and type(op).__name__ in _MERGE_CLASSES,
    "pool": lambda op, n_in: isinstance(op, _POOL_TYPES),
    "stage name": lambda op, n_in: bool(_STAGE_NAME.search(op.name)),
    # Layers that say so themselves, an attribute saved with them: a ViT's patch embedding and
    # transformer layers (bench.models.hub_layers), whose names and classes say nothing general.
    "declared": lambda op, n_in: getattr(op, "ends_block", False) is True,
}


def is_block_end(op: keras.Operation, n_inputs: int) -> bool:
    return any(rule(op, n_inputs) for rule in BLOCK_END_RULES.values())


def _has_weights(ops: list[keras.Operation]) -> bool:
    return any(getattr(op, "weights", None) for op in ops)


def _block_spans(model: keras.Model) -> tuple[_Graph, list[range]]:
    graph = _graph(model)
    last = len(graph.ops) - 1
    n_inputs = [0] * len(graph.ops)
    for _, w in graph.edges:
        n_inputs[w] += 1
    ends = [
        i for i in _cut_positions(graph) if i == last or is_block_end(graph.ops[i], n_inputs[i])
    ]
    spans: list[range] = []
    start = 0
    for end in ends:
        spans.append(range(start, end + 1))
        start = end + 1

    merged: list[range] = []
    for span in spans:
        if merged and not _has_weights([graph.ops[i] for i in span]):
            merged[-1] = range(merged[-1].start, span.stop)
        else:
            merged.append(span)
    # The first span can be weightless too (a model that starts with a pool): join it forward.
    if len(merged) > 1 and not _has_weights([graph.ops[i] for i in merged[0]]):
        merged[1] = range(merged[0].start, merged[1].stop)
        merged.pop(0)
    return graph, merged


def block_ends(model: keras.Model) -> list[str]:
    """Names of the last layer of each block, in order; the last one is the model's output layer."""
    graph, spans = _block_spans(model)
    return [graph.ops[span.stop - 1].name for span in spans]


def block_outputs(model: keras.Model) -> list[Any]:
    """The symbolic output tensor of each block, in order.

    Use these, not ``block_ends`` names, to split a model at a block boundary (e.g.
    ``keras.Model(model.inputs, block_outputs(model)[i])`` and ``keras.Model(that_tensor,
    model.outputs)``): some ends are unnamed ops (ConvNeXt's ``x + y``) that ``get_layer`` cannot
    find, and auto-generated names (``add_17``) change from one build to the next.
    """
    graph, spans = _block_spans(model)
    return [graph.nodes[span.stop - 1].output_tensors[0] for span in spans]


def blocks(model: keras.Model) -> list[list[keras.layers.Layer]]:
    """The model's layers partitioned into consecutive blocks (the input layer is in the first)."""
    graph, spans = _block_spans(model)
    return [
        [graph.ops[i] for i in span if isinstance(graph.ops[i], keras.layers.Layer)]
        for span in spans
    ]


# --- unfreezing ------------------------------------------------------------------------------


def _check_depth(depth: int | str, n_blocks: int, name: str) -> int:
    allowed = f"use an integer from 0 (only the head trains) to {n_blocks} or 'all'"
    if isinstance(depth, str):
        text = depth.strip().lower()
        if text == "all":
            return n_blocks
        if not text.lstrip("-").isdigit():
            raise ConfigError(f"Unfrozen depth {depth!r} for {name!r} is not a number: {allowed}.")
        depth = int(text)
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise ConfigError(f"Unfrozen depth {depth!r} for {name!r} is not a number: {allowed}.")
    if not 0 <= depth <= n_blocks:
        raise ConfigError(
            f"Unfrozen depth {depth} is out of range for {name!r}, which has {n_blocks} blocks: "
            f"{allowed}."
        )
    return depth


def set_unfrozen(model: keras.Model, depth: int | str) -> int:
    """Make the last ``depth`` blocks trainable and freeze the rest; return that block count.

    ``0`` freezes the whole model (a feature extractor), ``'all'`` trains every layer. Frozen
    BatchNormalization layers then run in inference mode even under ``training=True``: Keras 3
    uses batch statistics only when a BN layer is both called in training and trainable.
    """
    parts = blocks(model)
    k = _check_depth(depth, len(parts), model.name)
    model.trainable = True
    for i, block in enumerate(parts):
        for layer in block:
            _set_trainable(layer, i >= len(parts) - k)
    return k


def _set_trainable(layer: keras.layers.Layer, value: bool) -> None:
    # Set every layer explicitly rather than relying on Keras' recursive setter: on the TF
    # backend `layer.trainable = True` is skipped when the flag is already True (TF's
    # AutoTrackable short-circuits `self.x = self.x`), so sublayers frozen earlier would stay
    # frozen. Nested models (ConvNeXt's stem) are walked the same way.
    layer.trainable = value
    if isinstance(layer, keras.Model):
        for sub in layer.layers:
            _set_trainable(sub, value)


def iter_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """All layers of ``model``, including those inside nested models."""
    found: list[keras.layers.Layer] = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(iter_layers(layer))
    return found
