# Raw benchmark files (or the Hugging Face Hub) -> data/processed/<task>/<split>.jsonl + manifest.json.


rule prepare_data:
    output:
        directory(DATA_DIR),
    log:
        "logs/prepare_data/prepare_data.log",
    benchmark:
        "results/benchmarks/prepare_data/prepare_data.tsv"
    conda:
        "../envs/medmoelora.yaml"
    params:
        source=(f"--raw-dir {shlex.quote(RAW_DATA_DIR)}" if config["data"]["source"] == "raw" else "--from-hub"),
        general_task=config["data"]["general_task"],
        validation=config["data"]["pubmedqa_validation"],
        seed=config["data"]["seed"],
    shell:
        "medmoelora prepare-data {params.source} --out {output} --general-task {params.general_task}"
        " --pubmedqa-validation {params.validation} --seed {params.seed} > {log} 2>&1"
