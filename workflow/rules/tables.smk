# Per-document eval results and training metrics -> results/table{1..5}.csv (every score with its 95%
# interval, seeds pooled), results/figures/*.png, results/report.md. Every output that a reader looks at is
# marked for Snakemake's own report (`snakemake --report results/report.html`), with a caption in
# workflow/report/.


rule table1:
    input:
        eval_files([BASE_RUN, *MAIN_RUNS], SAMPLES),
        train_files(MAIN_RUNS),
    output:
        report("results/table1.csv", caption="../report/table1.rst", category="Tables"),
    log:
        "logs/table1/table1.log",
    benchmark:
        "results/benchmarks/table1/table1.tsv"
    conda:
        "../envs/medmoelora.yaml"
    params:
        rows=row_args([BASE_RUN, *MAIN_RUNS]),
        base=BASE_RUN,
        seeds=seed_args(),
    shell:
        "python -m medmoelora_eval.tables main --rows {params.rows} --base {params.base} --seeds {params.seeds}"
        " --out {output} 2> {log}"


rule table2:
    input:
        eval_files(ALLOCATION.values(), SAMPLES),
        train_files(ALLOCATION.values()),
        train_files(ALLOCATION.values(), "adapter_config.json"),
    output:
        report("results/table2.csv", caption="../report/table2.rst", category="Tables"),
    log:
        "logs/table2/table2.log",
    benchmark:
        "results/benchmarks/table2/table2.tsv"
    conda:
        "../envs/medmoelora.yaml"
    params:
        rows=row_args(ALLOCATION),
        seeds=seed_args(),
    shell:
        "python -m medmoelora_eval.tables allocation --rows {params.rows} --seeds {params.seeds} --out {output} 2> {log}"


rule table3:
    input:
        eval_files(TEMPERATURE.values(), SAMPLES),
        train_files(TEMPERATURE.values()),
        train_files(TEMPERATURE.values(), "adapter_model.safetensors"),
    output:
        report("results/table3.csv", caption="../report/table3.rst", category="Tables"),
    log:
        "logs/table3/table3.log",
    benchmark:
        "results/benchmarks/table3/table3.tsv"
    conda:
        "../envs/medmoelora.yaml"
    params:
        rows=row_args(TEMPERATURE),
        seeds=seed_args(),
    shell:
        "python -m medmoelora_eval.tables temperature --rows {params.rows} --seeds {params.seeds} --out {output} 2> {log}"


rule table4:
    input:
        eval_files([BASE_RUN, *FORGETTING], SAMPLES),
        train_files(FORGETTING),
    output:
        report("results/table4.csv", caption="../report/table4.rst", category="Tables"),
    log:
        "logs/table4/table4.log",
    benchmark:
        "results/benchmarks/table4/table4.tsv"
    conda:
        "../envs/medmoelora.yaml"
    params:
        rows=row_args(FORGETTING),
        base=BASE_RUN,
        seeds=seed_args(),
    shell:
        "python -m medmoelora_eval.tables forgetting --rows {params.rows} --base {params.base}"
        " --seeds {params.seeds} --out {output} 2> {log}"


rule table5:
    input:
        train_files(MAIN_RUNS),
        benchmarks=[f"results/benchmarks/train/{seeded}.tsv" for run in MAIN_RUNS for seeded in run_dirs(run)],
    output:
        report("results/table5.csv", caption="../report/table5.rst", category="Tables"),
    log:
        "logs/table5/table5.log",
    benchmark:
        "results/benchmarks/table5/table5.tsv"
    conda:
        "../envs/medmoelora.yaml"
    params:
        rows=row_args(MAIN_RUNS),
        seeds=seed_args(),
    shell:
        "python -m medmoelora_eval.tables cost --rows {params.rows} --seeds {params.seeds}"
        " --benchmarks results/benchmarks --out {output} 2> {log}"


rule figure_routing:
    input:
        # the first seed: expert i of one seed is not expert i of another, so gates do not average
        train_files([config["figures"]["routing_run"]], "routing_stats.json")[0],
    output:
        report("results/figures/routing_heatmap.png", caption="../report/routing_heatmap.rst", category="Figures"),
    log:
        "logs/figure_routing/figure_routing.log",
    benchmark:
        "results/benchmarks/figure_routing/figure_routing.tsv"
    conda:
        "../envs/medmoelora.yaml"
    shell:
        "python -m medmoelora_eval.figures routing {input} --out {output} 2> {log}"


rule figure_forgetting:
    input:
        "results/table4.csv",
    output:
        report("results/figures/forgetting.png", caption="../report/forgetting.rst", category="Figures"),
    log:
        "logs/figure_forgetting/figure_forgetting.log",
    benchmark:
        "results/benchmarks/figure_forgetting/figure_forgetting.tsv"
    conda:
        "../envs/medmoelora.yaml"
    shell:
        "python -m medmoelora_eval.figures forgetting {input} --out {output} 2> {log}"


rule figure_probe:
    input:
        train_files(MAIN_RUNS),
    output:
        report("results/figures/general_probe.png", caption="../report/general_probe.rst", category="Figures"),
    log:
        "logs/figure_probe/figure_probe.log",
    benchmark:
        "results/benchmarks/figure_probe/figure_probe.tsv"
    conda:
        "../envs/medmoelora.yaml"
    shell:
        "python -m medmoelora_eval.figures probe {input} --out {output} 2> {log}"


rule figure_temperature:
    input:
        train_files([config["figures"]["temperature_run"]], "adapter_model.safetensors"),
    output:
        report("results/figures/temperature.png", caption="../report/temperature.rst", category="Figures"),
    log:
        "logs/figure_temperature/figure_temperature.log",
    benchmark:
        "results/benchmarks/figure_temperature/figure_temperature.tsv"
    conda:
        "../envs/medmoelora.yaml"
    shell:
        "python -m medmoelora_eval.figures temperature {input} --out {output} 2> {log}"


rule report:
    input:
        tables=TABLES,
        claims="results/claims.csv",
        figures=FIGURES,
        reported="results/paper/reported.csv",
        documents=eval_files([BASE_RUN], SAMPLES),
        routing=train_files(REPORTED_RUNS, "routing_stats.json"),
        metrics=train_files(REPORTED_RUNS),
        adapters=train_files(REPORTED_RUNS, "adapter_model.safetensors"),
        mechanisms=MECHANISMS,
    output:
        report("results/report.md", caption="../report/report_md.rst", category="Report"),
    log:
        "logs/report/report.log",
    benchmark:
        "results/benchmarks/report/report.tsv"
    conda:
        "../envs/medmoelora.yaml"
    params:
        runs=" ".join(REPORTED_RUNS),
        seeds=seed_args(),
        base=BASE_RUN,
        model=config["model"]["spec"],
        paper="--paper-base-model" if config["report"]["paper_base_model"] else "",
        mechanisms="--mechanisms results/mechanisms" if MECHANISMS else "",
    shell:
        "python -m medmoelora_eval.report --tables {input.tables} --claims {input.claims} --figures {input.figures}"
        " --reported {input.reported} --runs {params.runs} --seeds {params.seeds} --base {params.base}"
        " --model {params.model:q} {params.paper} {params.mechanisms} --out {output} 2> {log}"
