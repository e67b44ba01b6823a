# Eval results and training metrics -> results/table{1..5}.csv, results/figures/*.png, results/report.md.


rule table1:
    input:
        eval_files([BASE_RUN, *MAIN_RUNS]),
        train_files(MAIN_RUNS),
    output:
        "results/table1.csv",
    log:
        "logs/table1/table1.log",
    conda:
        "../envs/medmoelora.yaml"
    params:
        rows=row_args([BASE_RUN, *MAIN_RUNS]),
        base=BASE_RUN,
    shell:
        "python -m medmoelora_eval.tables main --rows {params.rows} --base {params.base} --out {output} 2> {log}"


rule table2:
    input:
        eval_files(ALLOCATION.values()),
        train_files(ALLOCATION.values()),
    output:
        "results/table2.csv",
    log:
        "logs/table2/table2.log",
    conda:
        "../envs/medmoelora.yaml"
    params:
        rows=row_args(ALLOCATION),
    shell:
        "python -m medmoelora_eval.tables allocation --rows {params.rows} --out {output} 2> {log}"


rule table3:
    input:
        eval_files(TEMPERATURE.values()),
        train_files(TEMPERATURE.values()),
        train_files(TEMPERATURE.values(), "adapter_model.safetensors"),
    output:
        "results/table3.csv",
    log:
        "logs/table3/table3.log",
    conda:
        "../envs/medmoelora.yaml"
    params:
        rows=row_args(TEMPERATURE),
    shell:
        "python -m medmoelora_eval.tables temperature --rows {params.rows} --out {output} 2> {log}"


rule table4:
    input:
        eval_files([BASE_RUN, *FORGETTING]),
        train_files(FORGETTING),
    output:
        "results/table4.csv",
    log:
        "logs/table4/table4.log",
    conda:
        "../envs/medmoelora.yaml"
    params:
        rows=row_args(FORGETTING),
        base=BASE_RUN,
    shell:
        "python -m medmoelora_eval.tables forgetting --rows {params.rows} --base {params.base} --out {output} 2> {log}"


rule table5:
    input:
        train_files(MAIN_RUNS),
    output:
        "results/table5.csv",
    log:
        "logs/table5/table5.log",
    conda:
        "../envs/medmoelora.yaml"
    params:
        rows=row_args(MAIN_RUNS),
    shell:
        "python -m medmoelora_eval.tables cost --rows {params.rows} --out {output} 2> {log}"


rule figure_routing:
    input:
        "results/train/{run}/routing_stats.json".format(run=config["figures"]["routing_run"]),
    output:
        "results/figures/routing_heatmap.png",
    log:
        "logs/figure_routing/figure_routing.log",
    conda:
        "../envs/medmoelora.yaml"
    shell:
        "python -m medmoelora_eval.figures routing {input} --out {output} 2> {log}"


rule figure_forgetting:
    input:
        "results/table4.csv",
    output:
        "results/figures/forgetting.png",
    log:
        "logs/figure_forgetting/figure_forgetting.log",
    conda:
        "../envs/medmoelora.yaml"
    shell:
        "python -m medmoelora_eval.figures forgetting {input} --out {output} 2> {log}"


rule figure_temperature:
    input:
        "results/train/{run}/adapter_model.safetensors".format(run=config["figures"]["temperature_run"]),
    output:
        "results/figures/temperature.png",
    log:
        "logs/figure_temperature/figure_temperature.log",
    conda:
        "../envs/medmoelora.yaml"
    shell:
        "python -m medmoelora_eval.figures temperature {input} --out {output} 2> {log}"


rule report:
    input:
        tables=TABLES,
        figures=FIGURES,
        reported="results/paper/reported.csv",
    output:
        "results/report.md",
    log:
        "logs/report/report.log",
    conda:
        "../envs/medmoelora.yaml"
    shell:
        "python -m medmoelora_eval.report --tables {input.tables} --figures {input.figures}"
        " --reported {input.reported} --out {output} 2> {log}"
