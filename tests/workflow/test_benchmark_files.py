"""Every workflow rule that runs a command records its time and memory in a benchmark file under its name."""

from __future__ import annotations

import re
from pathlib import Path

RULES = Path(__file__).resolve().parents[2] / "workflow" / "rules"


def rule_blocks() -> dict[str, str]:
    blocks = {}
    for path in sorted(RULES.glob("*.smk")):
        for match in re.finditer(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", path.read_text(encoding="utf-8"), re.M | re.S):
            blocks[match.group(1)] = match.group(2)
    return blocks


def test_every_rule_writes_a_benchmark_file_named_after_it() -> None:
    blocks = rule_blocks()
    assert {"train", "eval", "prepare_data", "table5", "perf"} <= set(blocks)
    missing = [
        rule
        for rule, body in blocks.items()
        if re.search(r"^    (shell|run|script):", body, re.M)  # a job that does work; a target rule has only input
        and not re.search(rf'^    benchmark:\n        f?"results/benchmarks/{rule}/[^"]+\.tsv"', body, re.M)
    ]
    assert missing == []
