"""Prompt functions of ``medmoe_pubmedqa``: those of `medmoelora.data.prompts`, shared with training."""

from medmoelora.tasks import get_prompt

_PROMPT = get_prompt("pubmedqa")

doc_to_text = _PROMPT.doc_to_text
doc_to_target = _PROMPT.doc_to_target
doc_to_choice = _PROMPT.doc_to_choice
