"""Prompt functions of ``medmoe_medqa``: those of `medmoelora.data.prompts`, shared with training."""

from medmoelora.data.prompts import PROMPTS

_PROMPT = PROMPTS["medqa"]

doc_to_text = _PROMPT.doc_to_text
doc_to_target = _PROMPT.doc_to_target
doc_to_choice = _PROMPT.doc_to_choice
