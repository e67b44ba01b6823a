# One adapter per run and seed: a method preset plus the run's overrides, all sharing config `training`;
# the seed (config `seeds`) sets data order and initialisation.


rule train:
    input:
        model=MODEL_DIR,
        data=DATA_DIR,
    output:
        adapter="results/train/{run}/seed{seed}/adapter_model.safetensors",
        adapter_config="results/train/{run}/seed{seed}/adapter_config.json",
        routing="results/train/{run}/seed{seed}/routing_stats.json",
        metrics="results/train/{run}/seed{seed}/train_metrics.json",
        train_log="results/train/{run}/seed{seed}/train_log.csv",
    log:
        "logs/train/{run}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train/{run}/seed{seed}.tsv"
    conda:
        "../envs/medmoelora.yaml"
    threads: compute("train", "threads")
    resources:
        gpu=compute("train", "gpus"),
        mem_mb=compute("train", "mem_mb"),
        runtime=compute("train", "runtime"),
    params:
        launcher=get_train_launcher,
        method=lambda wildcards: RUNS[wildcards.run]["method"],
        overrides=get_train_overrides,
        out=subpath(output.adapter, parent=True),
    shell:
        # --resume-if-possible: a killed or preempted attempt (a rerun, or a --retries attempt) continues
        # from its last complete checkpoint. Checkpoints live in results/train/{run}/seed{seed}/checkpoints/,
        # not a declared output, so Snakemake's removal of a failed job's outputs keeps them; each holds
        # train_log.csv as it was, so the removed log comes back. A checkpoint of other settings or inputs
        # (the config, model or data changed) is discarded and the run starts afresh.
        "{params.launcher} train --model {input.model} --data {input.data} --method {params.method}"
        " --out {params.out} --resume-if-possible {params.overrides} > {log} 2>&1"
