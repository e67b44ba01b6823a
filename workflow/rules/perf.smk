# Performance benchmarks: `snakemake --cores 8 results/perf.csv`. Not part of `all`: they
# measure this machine, not the method, and want the machine to themselves (threads = all cores).


rule perf_layer:
    output:
        layer="results/perf/layer.csv",
        top_k="results/perf/top_k.csv",
    log:
        "logs/perf_layer/perf_layer.log",
    benchmark:
        "results/benchmarks/perf_layer/perf_layer.tsv"
    conda:
        "../envs/medmoelora.yaml"
    threads: compute("train", "threads")
    shell:
        "python -m medmoelora_eval.perf_layer --out {output.layer} --top-k-out {output.top_k} > {log} 2>&1"


rule perf_model:
    input:
        model=MODEL_DIR,
    output:
        model="results/perf/model.csv",
        lm_eval="results/perf/lm_eval.csv",
    log:
        "logs/perf_model/perf_model.log",
    benchmark:
        "results/benchmarks/perf_model/perf_model.tsv"
    conda:
        "../envs/medmoelora.yaml"
    threads: compute("train", "threads")
    shell:
        "python -m medmoelora_eval.perf_model --model {input.model} --out {output.model}"
        " --lm-eval-out {output.lm_eval} > {log} 2>&1"


# make table1 before and after the performance work: both revisions from git, one after the other, on the
# fixed config/perf_table1.yaml (17 minutes on 2 idle CPU cores). 3abc728 is main just before the merge
# of the performance work (e4ce9a5: exact merge, cached weights, router rows in A's GEMM).
rule perf_table1:
    input:
        config="config/perf_table1.yaml",
    output:
        "results/perf/table1_wall.csv",
    log:
        "logs/perf_table1/perf_table1.log",
    benchmark:
        "results/benchmarks/perf_table1/perf_table1.tsv"
    conda:
        "../envs/medmoelora.yaml"
    threads: compute("train", "threads")
    params:
        before="3abc728",
    shell:
        "python -m medmoelora_eval.perf_table1 --before {params.before} --after HEAD --config {input.config}"
        " --cores {threads} --out {output} --logs logs/perf_table1 > {log} 2>&1"


rule perf:
    input:
        layer="results/perf/layer.csv",
        top_k="results/perf/top_k.csv",
        model="results/perf/model.csv",
        lm_eval="results/perf/lm_eval.csv",
        table1_wall="results/perf/table1_wall.csv",
    output:
        csv="results/perf.csv",
        figure="results/figures/perf.png",
        targets="results/perf/targets.csv",
    log:
        "logs/perf/perf.log",
    benchmark:
        "results/benchmarks/perf/perf.tsv"
    conda:
        "../envs/medmoelora.yaml"
    shell:
        "python -m medmoelora_eval.perf_report --layer {input.layer} --model {input.model}"
        " --lm-eval {input.lm_eval} --top-k {input.top_k} --table1-wall {input.table1_wall} --out {output.csv}"
        " --figure {output.figure} --targets {output.targets} > {log} 2>&1"
