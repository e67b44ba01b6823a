# The base model as a plain transformers directory (a Hub id, the SmolLM2 GGUF wheel, or a tiny random Llama).


rule materialize_model:
    output:
        directory(MODEL_DIR),
    log:
        f"logs/materialize_model/{config['model']['name']}.log",
    benchmark:
        f"results/benchmarks/materialize_model/{config['model']['name']}.tsv"
    conda:
        "../envs/medmoelora.yaml"
    resources:
        mem_mb=compute("train", "mem_mb"),
    params:
        spec=config["model"]["spec"],
        dtype=config["model"]["dtype"],
    shell:
        "medmoelora materialize-model {params.spec:q} --out {output} --dtype {params.dtype} > {log} 2>&1"
