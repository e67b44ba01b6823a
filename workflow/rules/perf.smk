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


rule perf:
    input:
        layer="results/perf/layer.csv",
        top_k="results/perf/top_k.csv",
        model="results/perf/model.csv",
        lm_eval="results/perf/lm_eval.csv",
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
        " --lm-eval {input.lm_eval} --top-k {input.top_k} --out {output.csv}"
        " --figure {output.figure} --targets {output.targets} > {log} 2>&1"
