"""Prompt functions of ``medmoe_gsm8k``: those of `medmoelora.data.prompts`, shared with training."""

from medmoelora.tasks import get_prompt

_PROMPT = get_prompt("gsm8k")

doc_to_text = _PROMPT.doc_to_text
doc_to_target = _PROMPT.doc_to_target
