"""Prompt functions of ``medmoe_gsm8k``: those of `medmoelora.data.prompts`, shared with training."""

from medmoelora.data.prompts import PROMPTS

_PROMPT = PROMPTS["gsm8k"]

doc_to_text = _PROMPT.doc_to_text
doc_to_target = _PROMPT.doc_to_target
