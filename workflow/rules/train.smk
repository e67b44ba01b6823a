# One adapter per run and seed: a method preset plus the run's overrides, all sharing config `training`;
# the seed (config `seeds`) sets data order and initialisation.


# Every run starts as the base model, so the held-out losses at the start are measured once, here, and
# every training job reads them (`medmoelora train --heldout-start`): each job would otherwise spend
# a forward pass per held-out example on the same numbers (38 s of a default training job: the
# heldout_start job of `make table1` on 2 idle cores).
# A run whose own training settings change the held-out examples measures its own start.
rule heldout_start:
    input:
        model=MODEL_DIR,
        data=DATA_DIR,
    output:
        HELDOUT_START,
    log:
        "logs/heldout_start/heldout_start.log",
    benchmark:
        "results/benchmarks/heldout_start/heldout_start.tsv"
    conda:
        "../envs/medmoelora.yaml"
    threads: compute("train", "threads")
    resources:
        gpu=compute("train", "gpus"),
        mem_mb=compute("train", "mem_mb"),
        runtime=compute("train", "runtime"),
    params:
        overrides=set_args({"training": config["training"]}),
    shell:
        "medmoelora heldout-start --model {input.model} --data {input.data} --out {output}"
        " {params.overrides} > {log} 2>&1"


rule train:
    input:
        model=MODEL_DIR,
        data=DATA_DIR,
        heldout_start=HELDOUT_START,
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
        " --out {params.out} --heldout-start {input.heldout_start} --resume-if-possible {params.overrides}"
        " > {log} 2>&1"
