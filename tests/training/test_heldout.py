"""Held-out loss per training task: sets never trained on, the start is the base model, the end is measured."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from medmoelora import AdapterConfig, inject_adapter
from medmoelora.serialization import load_adapter
from medmoelora.tasks import TRAINING_TASKS, get_prompt
from medmoelora.training.config import build_run_config
from medmoelora.training.data import IGNORE_INDEX, Collator, build_examples
from medmoelora.training.heldout import choice_token_ids, held_out_examples, held_out_set, mean_token_nll
from medmoelora.training.run import train
from tests.tiny import randomize_adapter
from tests.training.test_train import FAST

TASKS = TRAINING_TASKS  # medqa, medmcqa, pubmedqa, general_instruct
GENERATION = "general_instruct"  # no options to choose between


def test_validation_split_is_used_where_prepared_and_a_seeded_train_slice_elsewhere(prepared_data_dir):
    pubmedqa = held_out_set(prepared_data_dir, "pubmedqa", 32)
    assert pubmedqa.source == "validation" and pubmedqa.excluded_ids == frozenset()
    validation_ids = {json.loads(line)["id"] for line in (prepared_data_dir / "pubmedqa/validation.jsonl").open()}
    assert {record["id"] for record in pubmedqa.records} == validation_ids
    medmcqa = held_out_set(prepared_data_dir, "medmcqa", 32)
    assert medmcqa.source == "train"
    assert len(medmcqa.records) == 1  # at most half of the 3-record pool: training keeps the rest
    assert held_out_set(prepared_data_dir, "medmcqa", 32) == medmcqa  # a fixed draw


def test_training_never_sees_a_held_out_record(prepared_data_dir, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    adapter = AdapterConfig.from_preset("lora")
    sets = [held_out_set(prepared_data_dir, task, 32) for task in TASKS]
    excluded = frozenset().union(*(s.excluded_ids for s in sets))
    assert excluded  # medqa and medmcqa have no validation split here
    kept = build_examples(prepared_data_dir, TASKS, tokenizer, adapter, 96, None, 0, exclude_ids=excluded)
    everything = build_examples(prepared_data_dir, TASKS, tokenizer, adapter, 96, None, 0)
    assert len(kept) == len(everything) - len(excluded)
    held_out_inputs = {tuple(e.input_ids) for s in sets for e in held_out_examples(s, tokenizer, adapter, TASKS, 96)}
    assert not held_out_inputs & {tuple(example.input_ids) for example in kept}


def test_a_validation_split_inside_the_training_pool_is_not_used_as_held_out(prepared_data_dir, tmp_path):
    data = tmp_path / "processed"
    shutil.copytree(prepared_data_dir, data)
    with (data / "pubmedqa/train.jsonl").open("a", encoding="utf-8") as pool:  # the pool now holds validation
        pool.write((data / "pubmedqa/validation.jsonl").read_text(encoding="utf-8"))
    pubmedqa = held_out_set(data, "pubmedqa", 32)
    assert pubmedqa.source == "train" and pubmedqa.excluded_ids


def test_train_metrics_hold_finite_start_and_end_losses_and_the_start_is_the_base_model(
    tiny_model_dir, prepared_data_dir, tmp_path
):
    # The general-skill monitor's no-grad forwards in mid-run are what once left a stale weight cache.
    config = build_run_config("med_moe_lora", overrides=[*FAST, "training.max_steps=3", "training.monitor_steps=1"])
    metrics = train(tiny_model_dir, prepared_data_dir, tmp_path, config)
    written = json.loads((tmp_path / "train_metrics.json").read_text())["heldout"]
    assert written == metrics["heldout"] and set(written) == set(TASKS)

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    # The end is the saved adapter's loss, as a fresh process would measure it (a stale weight cache
    # once gave the losses of an earlier step here).
    trained = load_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), tmp_path).eval()
    for task, entry in written.items():
        assert math.isfinite(entry["loss_start"]) and math.isfinite(entry["loss_end"]) and entry["tokens"] > 0
        assert entry["loss_end"] != entry["loss_start"], task  # the adapter changed the model
        if task == GENERATION:
            assert "choice_loss_start" not in entry
        else:
            assert 0 <= entry["choice_accuracy_start"] <= 1 and math.isfinite(entry["choice_loss_end"])
        examples = held_out_examples(
            held_out_set(prepared_data_dir, task, 32), tokenizer, config.adapter, TASKS, config.training.max_length
        )
        base = mean_token_nll(base_model, examples)
        assert entry["loss_start"] == base["loss"] and entry["tokens"] == base["tokens"], task
        end = mean_token_nll(trained, examples)["loss"]
        assert entry["loss_end"] == pytest.approx(end, rel=1e-5, abs=1e-6), task
        if task != GENERATION:
            choices = [
                choice_token_ids(tokenizer, record) for record in held_out_set(prepared_data_dir, task, 32).records
            ]
            base = mean_token_nll(base_model, examples, choices)
            assert entry["choice_loss_start"] == base["choice_loss"], task


@pytest.mark.parametrize("method", ["med_moe_lora", "multi_lora"])
def test_at_initialisation_the_adapted_model_is_exactly_the_base_model(method, tiny_model_dir, prepared_data_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    adapter = AdapterConfig.from_preset(method)
    adapted = inject_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), adapter)
    examples = held_out_examples(held_out_set(prepared_data_dir, "medqa", 32), tokenizer, adapter, TASKS, 96)
    initial = mean_token_nll(adapted, examples)
    with adapted.disable_adapters():
        assert mean_token_nll(adapted, examples) == initial
    randomize_adapter(adapted)  # the comparison can fail: a non-zero adapter changes the loss
    assert mean_token_nll(adapted, examples) != initial


def test_the_mean_is_the_padded_batchs_over_its_answer_tokens(tiny_model_dir, prepared_data_dir):
    # mean_token_nll runs one example at a time with logits at the answer positions only; the reference here is
    # the plain way: one right-padded batch, every position's logits, cross-entropy over the labelled ones.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    adapter = AdapterConfig.from_preset("lora")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    examples = [
        example
        for task in TASKS
        for example in held_out_examples(held_out_set(prepared_data_dir, task, 32), tokenizer, adapter, TASKS, 96)
    ]
    assert len({len(example.input_ids) for example in examples}) > 1  # the batch below carries padding
    batch = Collator(pad_token_id=0)(examples)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
    labels = batch["labels"][:, 1:]  # (B, T - 1)
    total = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    tokens = int((labels != IGNORE_INDEX).sum())
    scored = mean_token_nll(model, examples)
    assert scored["tokens"] == tokens == sum(sum(t != IGNORE_INDEX for t in e.labels[1:]) for e in examples)
    assert scored["loss"] == pytest.approx(float(total) / tokens, rel=1e-5)


def test_choice_metrics_match_scoring_each_option_separately(tiny_model_dir, prepared_data_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    adapter = AdapterConfig.from_preset("lora")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    records, examples, choices = [], [], []
    for task in ("medqa", "medmcqa", "pubmedqa"):
        held_out = held_out_set(prepared_data_dir, task, 32)
        records += held_out.records
        examples += held_out_examples(held_out, tokenizer, adapter, TASKS, 96)
    choices = [choice_token_ids(tokenizer, record) for record in records]
    assert all(options is not None for options in choices)  # " A".." D", " yes" / " no" / " maybe": one token each
    result = mean_token_nll(model, examples, choices=choices)

    losses, hits = [], []
    for record, example in zip(records, examples, strict=True):  # lm-eval's way: one request per option
        prompt_format = get_prompt(record["task_id"])
        context = example.input_ids[: next(t for t, label in enumerate(example.labels) if label != -100)]
        scores = []
        for option in prompt_format.doc_to_choice(record):
            (option_id,) = tokenizer(" " + option, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([[*context, option_id]])).logits[0, -2]
            scores.append(float(torch.log_softmax(logits, -1)[option_id]))
        gold = prompt_format.doc_to_choice(record).index(prompt_format.answer(record))
        losses.append(-(scores[gold] - float(torch.logsumexp(torch.tensor(scores), 0))))
        hits.append(max(range(len(scores)), key=scores.__getitem__) == gold)
    assert result["choice_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-4)
    assert result["choice_accuracy"] == pytest.approx(sum(hits) / len(hits))
    assert "choice_loss" not in mean_token_nll(model, examples)  # only when asked
