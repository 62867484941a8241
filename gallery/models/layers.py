"""Which layers a network offers for attribution: the original tool's rule, on our graphs.

A node is a *bottleneck* when every path from the network's output back to its input
passes through it. By default a ReLU with a 4-D output is offered when it is a bottleneck
itself, or when walking backwards from it no convolution is reached without first crossing
a bottleneck (checkpoint-format.md, "Layers offered for attribution").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from gallery.models.networks import Node


@dataclass(frozen=True)
class LayerOptions:
    """How to choose the layers offered for attribution (the original tool's options)."""

    include: tuple[str, ...] | None = None
    """Keep only layers whose name contains one of these substrings (None: keep all)."""
    discard_first_n: int = 0
    """Drop this many of the earliest layers."""
    bottleneck_only: bool = True
    """Apply the bottleneck rule; off offers every node of the chosen op types."""
    op_types: tuple[str, ...] = field(default=("relu",))
    """Op types considered: relu, conv, l2pool, maxpool, add."""
    input_layer: bool = False
    """Also offer the observation itself as layer `input` (plain gradients)."""


def _reaches_input(nodes: Sequence[Node], start: str, removed: str | None) -> bool:
    by_name = {n.name: n for n in nodes}
    stack, seen = [start], set()
    while stack:
        name = stack.pop()
        if name == removed or name in seen:
            continue
        seen.add(name)
        node = by_name[name]
        if node.op == "input":
            return True
        stack.extend(node.inputs)
    return False


def bottlenecks(nodes: Sequence[Node]) -> set[str]:
    """Names of the nodes that every output-to-input path passes through."""
    output = nodes[-1].name
    return {n.name for n in nodes
            if n.op != "input" and not _reaches_input(nodes, output, removed=n.name)} | {output}


def _conv_before_bottleneck(nodes: Sequence[Node], node: Node, necks: set[str]) -> bool:
    by_name = {n.name: n for n in nodes}
    stack, seen = list(node.inputs), set()
    while stack:
        name = stack.pop()
        if name in seen or name in necks:
            continue
        seen.add(name)
        if by_name[name].op == "conv":
            return True
        stack.extend(by_name[name].inputs)
    return False


def offered_layers(nodes: Sequence[Node], ranks: dict[str, int],
                   options: LayerOptions = LayerOptions()) -> list[Node]:
    """The nodes offered for attribution, in network order.

    `ranks` gives each node's output rank (4 for (N, C, H, W)); only 4-D nodes qualify.
    """
    necks = bottlenecks(nodes)
    chosen = []
    for node in nodes:
        if node.op not in options.op_types or ranks.get(node.name) != 4:
            continue
        if options.bottleneck_only and node.name not in necks and _conv_before_bottleneck(
                nodes, node, necks):
            continue
        if options.include is not None and not any(s in node.label for s in options.include):
            continue
        chosen.append(node)
    chosen = chosen[options.discard_first_n:]
    if options.input_layer:
        chosen.insert(0, nodes[0])
    return chosen
