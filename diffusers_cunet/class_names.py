"""Class names of a class-conditional model: `id2label` in its config (as DiT's pipeline and transformers name
it), read by the pipelines so `class_labels` can be names as well as integers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def checked_id2label(id2label: Mapping[Any, str] | None, num_class_embeds: int | None,
                     null_class_label: int | None) -> dict[str, str] | None:  # fmt: skip
    """`id2label` with string keys (as JSON keeps them, so a saved and reloaded config is the same), after checking
    that it names each real class (0 .. n-1, the null class aside) once, with distinct names."""
    if id2label is None:
        return None
    if not num_class_embeds:
        raise ValueError("id2label needs a class-conditional model (num_class_embeds).")
    classes = num_class_embeds - (null_class_label is not None)
    try:
        names = {int(key): str(name) for key, name in id2label.items()}
    except (TypeError, ValueError) as error:
        raise ValueError(f"id2label keys must be class indices, got {sorted(id2label)}.") from error
    if sorted(names) != list(range(classes)):
        raise ValueError(f"id2label must name classes 0..{classes - 1} (the model's {classes}), got {sorted(names)}.")
    if len(set(names.values())) != classes:
        raise ValueError(f"id2label names must be distinct, got {list(names.values())}.")
    return {str(index): names[index] for index in range(classes)}


def label_ids(id2label: Mapping[str, str] | None, labels: Sequence[str | int]) -> list[int]:
    """The class indices of `labels`, each a name from `id2label` or an index (kept as it is)."""
    by_name = {name: int(index) for index, name in (id2label or {}).items()}
    ids = []
    for label in labels:
        if isinstance(label, str):
            if label not in by_name:
                known = sorted(by_name, key=by_name.get) if by_name else "none: the model records no class names"
                raise ValueError(f"Unknown class name {label!r}; the model's classes are {known}.")
            ids.append(by_name[label])
        else:
            ids.append(int(label))
    return ids
