"""Dotted names for nested parameter dicts (``'layers.0.blocks.1.attn.qkv.kernel'``)."""

from __future__ import annotations

from typing import Any, Mapping


def flatten_names(tree: Mapping, prefix: str = '') -> dict[str, Any]:
    """Flattens nested dicts (keys str or int) into ``{dotted name: leaf}``, in insertion order."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f'{prefix}{key}'
        if isinstance(value, Mapping):
            out.update(flatten_names(value, name + '.'))
        else:
            out[name] = value
    return out


def unflatten_names(flat: Mapping[str, Any], like: Mapping) -> dict:
    """Rebuilds the nested structure of ``like`` (keys and their types) from dotted names.

    Raises:
      KeyError: a name of ``like`` is missing from ``flat``.
    """
    def build(node: Mapping, prefix: str) -> dict:
        out = {}
        for key, value in node.items():
            name = f'{prefix}{key}'
            out[key] = build(value, name + '.') if isinstance(value, Mapping) else flat[name]
        return out

    return build(like, '')
