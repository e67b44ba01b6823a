# The paper's claims (medmoelora_eval.claims): each as a paired difference between two runs on the same
# documents, seeds pooled, with its 95% interval, p-value, detectable effect and verdict.
# config `claims.runs` maps the claims' roles to runs (default: the run of the role's name).


rule claims:
    input:
        samples=eval_files(CLAIM_RUNS.values(), SAMPLES),
        routing=train_files([CLAIM_RUNS["med_moe_lora"]] if "med_moe_lora" in CLAIM_RUNS else [], "routing_stats.json"),
    output:
        report("results/claims.csv", caption="../report/claims.rst", category="Claims"),
    log:
        "logs/claims/claims.log",
    benchmark:
        "results/benchmarks/claims/claims.tsv"
    conda:
        "../envs/medmoelora.yaml"
    params:
        runs=row_args(CLAIM_RUNS),
        seeds=seed_args(),
    shell:
        "python -m medmoelora_eval.claims --runs {params.runs} --seeds {params.seeds} --routing {input.routing}"
        " --out {output} 2> {log}"


rule figure_claims:
    input:
        "results/claims.csv",
    output:
        report("results/figures/claims.png", caption="../report/claims_figure.rst", category="Claims"),
    log:
        "logs/figure_claims/figure_claims.log",
    benchmark:
        "results/benchmarks/figure_claims/figure_claims.tsv"
    conda:
        "../envs/medmoelora.yaml"
    shell:
        "python -m medmoelora_eval.figures claims {input} --out {output} 2> {log}"
