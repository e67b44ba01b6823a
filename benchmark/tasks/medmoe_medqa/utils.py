"""``medmoe_medqa``: the prompt functions of `medmoelora.data.prompts` (shared with training) and the
per-document metrics of `medmoelora_eval.choice_metrics`."""

from medmoelora.tasks import get_prompt
from medmoelora_eval.choice_metrics import choice_metrics

_PROMPT = get_prompt("medqa")

doc_to_text = _PROMPT.doc_to_text
doc_to_target = _PROMPT.doc_to_target
doc_to_choice = _PROMPT.doc_to_choice


def process_results(doc: dict, results: list[tuple[float, bool]]) -> dict[str, float]:
    """acc, acc_norm, gold_logprob and brier from the choices' loglikelihoods."""
    return choice_metrics(results, doc_to_choice(doc), doc_to_target(doc), acc_norm=True)
