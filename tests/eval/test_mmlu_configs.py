"""The generated MMLU task YAMLs: up to date, the built-in's 57 subjects, the paper's 6 medical ones, the
51 others as the general (forgetting) group."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import lm_eval.tasks
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml  # the loader lm-eval's TaskManager uses

MMLU_DIR = Path(__file__).resolve().parents[2] / "benchmark" / "tasks" / "medmoe_mmlu"
BUILTIN_MMLU = Path(lm_eval.tasks.__file__).resolve().parent / "mmlu" / "default"
MEDICAL_SUBJECTS = [
    "anatomy",
    "clinical_knowledge",
    "college_biology",
    "college_medicine",
    "medical_genetics",
    "professional_medicine",
]


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_generate_configs", MMLU_DIR / "_generate_configs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def builtin_subjects() -> list[str]:
    return sorted(path.stem.removeprefix("mmlu_") for path in BUILTIN_MMLU.glob("mmlu_*.yaml"))


def group(name: str) -> dict:
    return load_yaml(MMLU_DIR / f"_{name}.yaml", resolve_func=False)


def test_committed_yamls_are_the_generators_output() -> None:
    rendered = generator().render_configs()
    committed = {path.name for path in MMLU_DIR.glob("*.yaml")}
    assert committed == set(rendered)
    for name, text in rendered.items():
        assert (MMLU_DIR / name).read_text(encoding="utf-8") == text, f"{name}: re-run _generate_configs.py"


def test_groups_list_the_builtin_subjects_and_the_medical_ones() -> None:
    subjects = [task.removeprefix("medmoe_mmlu_") for task in group("medmoe_mmlu")["task"]]
    assert len(subjects) == 57
    assert sorted(subjects) == builtin_subjects()
    medical = [task.removeprefix("medmoe_mmlu_") for task in group("medmoe_mmlu_medical")["task"]]
    assert medical == MEDICAL_SUBJECTS
    general = [task.removeprefix("medmoe_mmlu_") for task in group("medmoe_mmlu_general")["task"]]
    assert len(general) == 51 and not set(general) & set(MEDICAL_SUBJECTS)
    assert general == [subject for subject in subjects if subject not in MEDICAL_SUBJECTS]  # the built-in's order


def test_groups_average_over_questions_like_the_builtin() -> None:
    """acc as the built-in's group; each continuous metric of the subjects likewise, over questions."""
    builtin = load_yaml(BUILTIN_MMLU / "_mmlu.yaml", resolve_func=False)["aggregate_metric_list"]
    continuous = [{"metric": "gold_logprob", "weight_by_size": True}, {"metric": "brier", "weight_by_size": True}]
    template = load_yaml(MMLU_DIR / "_default_template_yaml", resolve_func=False)
    assert [entry["metric"] for entry in template["metric_list"]] == ["acc", "gold_logprob", "brier"]
    for name in ("medmoe_mmlu", "medmoe_mmlu_medical", "medmoe_mmlu_general"):
        assert group(name)["aggregate_metric_list"] == builtin + continuous
        assert group(name)["metadata"]["task_id"] == "mmlu"


def test_every_subject_has_the_builtin_description_and_its_own_data() -> None:
    for subject in builtin_subjects():
        ours = load_yaml(MMLU_DIR / f"medmoe_mmlu_{subject}.yaml", resolve_func=False)
        builtin = load_yaml(BUILTIN_MMLU / f"mmlu_{subject}.yaml", resolve_func=False)
        assert ours["description"] == builtin["description"]
        assert ours["task_alias"] == builtin["task_alias"]
        assert ours["dataset_kwargs"] == {"data_task": "mmlu", "splits": ["test", "dev"], "subject": subject}


def test_medical_group_loads_its_six_subjects(task_manager: TaskManager) -> None:
    loaded = task_manager.load(["medmoe_mmlu_medical"])
    assert loaded["group_map"] == {"medmoe_mmlu_medical": [f"medmoe_mmlu_{s}" for s in MEDICAL_SUBJECTS]}
    assert all(len(task.eval_docs) > 0 for task in loaded["tasks"].values())
