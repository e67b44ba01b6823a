"""Bad workflow configs (``snakemake -n`` in subprocesses): each stops the workflow at start with one line
naming the config key, "did you mean" for a misspelt one, no schema dump, no traceback, no file written.

Every case is a small YAML file laid over config/tiny.yaml (``--configfile config/tiny.yaml BAD.yaml``:
Snakemake merges mappings key by key), in its own copy of the workflow. All runs start together, once
per module; each test waits for its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from tests.errors.helpers import Case, assert_one_line_failure, snapshot
from tests.workflow.helpers import snakemake, workflow_copy

SNAKEMAKE_STATE = (".snakemake",)  # Snakemake's own bookkeeping, not an output


# Case.argv: the YAML laid over config/tiny.yaml.
CASES = [
    # Misspelt keys, at every level.
    Case("top-level key", "trainig: {max_steps: 1}", r"`trainig` is unknown; did you mean `training`\?"),
    Case(
        "training key",
        "training: {learning_rat: 0.1}",
        r"`training.learning_rat` is unknown; did you mean `training.learning_rate`\?",
    ),
    Case("adapter key", "adapter: {rankz: [8]}", r"`adapter.rankz` is unknown; did you mean `adapter.ranks`\?"),
    Case(
        "run key",
        "runs: {lora: {method: lora, adaptr: {}}}",
        r"`runs.lora.adaptr` is unknown; did you mean `runs.lora.adapter`\?",
    ),
    Case(
        "run's training key",
        "runs: {lora: {method: lora, training: {max_step: 3}}}",
        r"`runs.lora.training.max_step` is unknown; did you mean `runs.lora.training.max_steps`\?",
    ),
    Case("eval key", "eval: {limts: {medqa: 1}}", r"`eval.limts` is unknown; did you mean `eval.limits`\?"),
    # Wrong types and ranges: the key and what is allowed.
    Case(
        "training value type",
        "training: {max_steps: two}",
        r"`training.max_steps` = 'two' is invalid: must be an integer >= 1",
    ),
    Case(
        "training value range",
        "training: {learning_rate: -1}",
        r"`training.learning_rate` = -1 is invalid: must be a finite number > 0",
    ),
    Case("training tasks", "training: {tasks: [bogus]}", r"`training.tasks` = \['bogus'\].*entry 'bogus'"),
    Case("shared adapter value", "adapter: {top_k: 3}", r"`adapter.top_k` = 3 is invalid"),
    Case(
        "run's adapter value",
        "runs: {tau_2: {method: med_moe_lora, adapter: {temperature: -1}}}",
        r"`runs.tau_2.adapter.temperature` = -1 is invalid: must be a finite number > 0",
    ),
    Case(
        "method",
        "runs: {lora: {method: lora2}}",
        r"`runs.lora.method`: 'lora2' is not one of .*did you mean 'lora'\?",
    ),
    Case("data source", "data: {source: web}", r"`data.source`: 'web' is not one of \['raw', 'hub'\]"),
    Case("eval batch size", "eval: {batch_size: 0}", r"`eval.batch_size`: 0 is less than the minimum of 1"),
    Case("eval limit", "eval: {limits: {medqa: -3}}", r"`eval.limits.medqa`: -3 is less than the minimum"),
    Case(
        "eval limit task",
        "eval: {limits: {pubmedq: 3}}",
        r"unknown task in config key `eval.limits` 'pubmedq'; valid: .*Did you mean 'pubmedqa'\?",
    ),
    Case(
        "general training task",
        "data: {general_task: general_instrct}",
        r"`data.general_task` = 'general_instrct' is not one of general_instruct, none; "
        r"did you mean 'general_instruct'\?",
    ),
    Case(
        "compute threads",
        "compute: {train: {threads: many}}",
        r"`compute.train.threads`: 'many' is not of type 'integer'",
    ),
    # What only the whole config can say.
    Case("model spec", "model: {spec: tinyy}", r"`model.spec`: unknown model spec 'tinyy'.*'tiny'\?"),
    Case("reserved run name", "runs: {base: {method: lora}}", r"runs: 'base' is reserved"),
    Case("table names no run", "tables: {main: [lora, nope]}", r"tables.main names run 'nope'"),
    Case(
        "training task not prepared",
        "data: {general_task: none}",
        r"training.tasks includes 'general_instruct', but prepare-data writes general_instruct/train only with "
        r"data.general_task: general_instruct \(here none\)",
    ),
    Case(
        "training task without a train split",
        "training: {tasks: [medqa, mmlu]}",
        r"`training.tasks` = \['medqa', 'mmlu'\].*entry 'mmlu'",
    ),
]


@pytest.fixture(scope="module")
def snakemake_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, tuple[Path, set[str], Future[CompletedProcess[str]]]]]:
    """case id -> (its workflow copy, the files there before the run, the finished-or-running dry run)."""
    raw = tmp_path_factory.mktemp("raw")  # dry runs only check that the raw-data directory exists
    runs = {}
    with ThreadPoolExecutor(max_workers=3) as pool:
        for number, case in enumerate(CASES):
            workdir = workflow_copy(tmp_path_factory.mktemp(f"workflow_case{number}"))
            (workdir / "bad.yaml").write_text(case.argv + "\n", encoding="utf-8")
            arguments = ("-n", "results/table1.csv", "--configfile", "config/tiny.yaml", "bad.yaml")
            before = snapshot(workdir, ignore=SNAKEMAKE_STATE)
            runs[case.id] = (workdir, before, pool.submit(snakemake, workdir, *arguments, raw_data=raw))
        yield runs


@pytest.mark.slow
@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in CASES])
def test_bad_config_stops_the_workflow_in_one_line(case: Case, snakemake_runs) -> None:
    workdir, before, future = snakemake_runs[case.id]
    result = future.result()
    assert_one_line_failure(case, result.returncode, result.stderr, before, snapshot(workdir, ignore=SNAKEMAKE_STATE))
    assert len(result.stderr.strip().splitlines()) <= 2, result.stderr  # Snakemake's note on --configfile, the error
