# The paper's claims (medmoelora_eval.claims): each tested on its primary endpoint as the analysis plan
# (docs/analysis-plan.md) fixes it, with Holm's adjusted p-value and one verdict per claim.
# config `claims.runs` maps the claims' roles to runs (default: the run of the role's name);
# `claims.margins` sets the non-inferiority margins; the learnable-tau run's adapters feed C6's
# manipulation check.


rule claims:
    input:
        samples=eval_files(CLAIM_RUNS.values(), SAMPLES),
        routing=train_files([CLAIM_RUNS["med_moe_lora"]] if "med_moe_lora" in CLAIM_RUNS else [], "routing_stats.json"),
        learned_tau=train_files(
            [CLAIM_RUNS["tau_learnable"]] if "tau_learnable" in CLAIM_RUNS else [], "adapter_model.safetensors"
        ),
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
        margins=row_args(config.get("claims", {}).get("margins", {})),
    shell:
        "python -m medmoelora_eval.claims --runs {params.runs} --seeds {params.seeds} --routing {input.routing}"
        " --learned-tau {input.learned_tau} --margins {params.margins} --out {output} 2> {log}"


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
