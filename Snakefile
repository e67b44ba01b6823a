# Med-MoE-LoRA reproducibility workflow: raw data -> prepared data -> base model -> trained adapters ->
# lm-eval results -> the paper's tables, figures and report.
#
#   snakemake --cores 8 results/table1.csv                        # default: SmolLM2-135M on CPU (README: time)
#   snakemake --cores 2 all --configfile config/tiny.yaml                     # CI smoke run, minutes
#   snakemake --profile workflow/profiles/slurm all --configfile config/paper.yaml   # Llama-3-8B on SLURM
#   snakemake --report results/report.html                        # after a run: one self-contained page
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/mechanisms.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/claims.smk"
include: "workflow/rules/perf.smk"


rule all:
    default_target: True
    input:
        "results/claims.csv",
        TABLES,
        FIGURES,
        MECHANISMS,
        "results/report.md",
