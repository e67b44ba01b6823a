"""Expert ablation: which experts to remove from the mixture, from a short spec string.

    adapted.disable_experts("base")                # lm_eval --model_args ...,disable_experts=base
    adapted.disable_experts("20-29:1+3:0")         # expert 1 of layers 20-29 and expert 0 of layer 3
    adapted.disable_experts(None)                  # every expert back

The spec is one or more terms joined with ``+`` (lm-eval splits ``--model_args`` on commas):

- ``none``: nothing removed (the adapter as trained);
- ``base``: every layer's base experts (experts 0 .. num_base_experts - 1); an adapter without base
  experts has none to remove and fails;
- ``specialists``: every other expert of every layer (for an adapter without base experts: all of them);
- ``L:E``: expert E of decoder layer L, where L and E are each an index, an inclusive range ``a-b`` or
  ``*`` (all): ``*:*`` removes every expert, which leaves the base model.

A removed expert's gate is set to 0 and the remaining gates are renormalised to sum to 1
(``g_i m_i / sum_j g_j m_j``): the mixture is what a router over the kept experts alone would give.
With top-k routing the router's choice of k stays as trained and the removed ones drop out of it.
Where every expert with weight is removed (all of a layer's experts; a task-routed token's own expert;
LoRA's single expert) the layer adds nothing: it is the frozen W0.
"""

from __future__ import annotations

import re

from medmoelora.errors import UserError

ARGUMENT = "disable_experts"
_TERM = re.compile(r"(?P<layers>\*|\d+(?:-\d+)?):(?P<experts>\*|\d+(?:-\d+)?)")
SYNTAX = "none, base, specialists, or L:E terms (an index, a range a-b or *) joined with +, e.g. base+20-29:1"


def parse_disabled_experts(
    spec: str | None, experts_per_layer: dict[int, int], num_base_experts: int
) -> dict[int, frozenset[int]]:
    """Decoder layer -> the experts the spec removes there (layers with none left out).

    ``experts_per_layer`` maps each adapted decoder layer to its expert count N(l)."""
    text = "none" if spec is None else str(spec).strip()
    if not text:
        raise UserError(f"{ARGUMENT}= is empty; give {SYNTAX}")
    removed: dict[int, set[int]] = {layer: set() for layer in experts_per_layer}
    for term in text.split("+"):
        term = term.strip()
        if term == "none":
            continue
        if term == "base":
            if num_base_experts == 0:
                raise UserError(f"{ARGUMENT}={text}: this adapter has no base experts; use specialists or L:E terms")
            for experts in removed.values():
                experts.update(range(num_base_experts))
        elif term == "specialists":
            for layer, experts in removed.items():
                experts.update(range(num_base_experts, experts_per_layer[layer]))
        else:
            for layer, expert_indices in _layer_expert_term(term, text, experts_per_layer):
                removed[layer].update(expert_indices)
    return {layer: frozenset(experts) for layer, experts in sorted(removed.items()) if experts}


def _layer_expert_term(term: str, text: str, experts_per_layer: dict[int, int]) -> list[tuple[int, range]]:
    match = _TERM.fullmatch(term)
    if match is None:
        raise UserError(f"{ARGUMENT}={text}: cannot read {term!r}; give {SYNTAX}")
    adapted = sorted(experts_per_layer)
    layers = _index_range(match["layers"], "decoder layers", adapted[-1] + 1, text)
    unadapted = [layer for layer in layers if layer not in experts_per_layer]
    if unadapted:
        raise UserError(f"{ARGUMENT}={text}: decoder layer {unadapted[0]} has no adapted modules")
    return [
        (layer, _index_range(match["experts"], f"the experts of layer {layer}", experts_per_layer[layer], text))
        for layer in layers
    ]


def _index_range(part: str, valid: str, count: int, text: str) -> range:
    """``*``, ``i`` or ``a-b`` (inclusive) as a range within [0, count)."""
    if part == "*":
        return range(count)
    first, _, last = part.partition("-")
    start, stop = int(first), int(last or first)
    if start > stop:
        raise UserError(f"{ARGUMENT}={text}: the range {part} runs backwards; write {stop}-{start}")
    if stop >= count:
        raise UserError(f"{ARGUMENT}={text}: {stop} is out of range; {valid} are 0-{count - 1}")
    return range(start, stop + 1)
