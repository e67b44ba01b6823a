"""``medmoe_general_lm``: a probe document's plain text, from the task registry's prompt (shared with
prepare-data's contamination check)."""

from medmoelora.tasks import get_prompt

doc_to_target = get_prompt("general_lm").doc_to_target
