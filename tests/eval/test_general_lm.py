"""``medmoe_general_lm``: the general LM probe is scored as lm-eval's built-in wikitext task scores text."""

from __future__ import annotations

import math
from pathlib import Path

import lm_eval.tasks
from lm_eval.api.registry import get_metric_aggregation
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml  # the loader lm-eval's TaskManager uses

from medmoelora.data.prompts import instruction_plain_text

WIKITEXT = Path(lm_eval.tasks.__file__).resolve().parent / "wikitext" / "wikitext.yaml"


def test_scored_like_wikitext(task_manager: TaskManager) -> None:
    task = task_manager.load(["medmoe_general_lm"])["tasks"]["medmoe_general_lm"]
    wikitext = load_yaml(WIKITEXT, resolve_func=False)
    assert task.OUTPUT_TYPE == wikitext["output_type"] == "loglikelihood_rolling"
    assert [m["metric"] for m in task.config.metric_list] == [m["metric"] for m in wikitext["metric_list"]]
    for metric, aggregate in task.aggregation().items():
        assert aggregate is get_metric_aggregation(metric)  # wikitext's (its YAML names no aggregation)
        assert task.higher_is_better()[metric] is False

    docs = list(task.eval_docs)
    assert [doc["id"] for doc in docs] == ["seed_task_0-0", "seed_task_1-0", "seed_task_5-0"]
    items = {metric: [] for metric in task.aggregation()}
    for number, doc in enumerate(docs):
        text = instruction_plain_text(doc)
        request = task.construct_requests(doc, task.fewshot_context(doc, 0), metadata=("t", number, 1))
        assert request.arguments == (text,)  # the whole document, no prompt
        loglikelihood = -1.5 * len(text)
        scored = task.process_results(doc, [loglikelihood])
        words, size = len(text.split()), len(text.encode("utf-8"))
        assert scored == {
            "word_perplexity": (loglikelihood, words),
            "byte_perplexity": (loglikelihood, size),
            "bits_per_byte": (loglikelihood, size),
        }
        for metric, item in scored.items():
            items[metric].append(item)
    total_bytes = sum(len(instruction_plain_text(doc).encode("utf-8")) for doc in docs)
    total_ll = sum(-1.5 * len(instruction_plain_text(doc)) for doc in docs)
    assert task.aggregation()["bits_per_byte"](items["bits_per_byte"]) == -total_ll / total_bytes / math.log(2)
