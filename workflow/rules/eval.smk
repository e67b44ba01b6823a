# Every run's every seed (and the base model, once) on every task, in ONE lm_eval call each: start-up is
# paid once. {model} is `base` or `<run>/seed<k>`: results/eval/{model}/ evaluates results/train/{model}/.
# The call is lm-eval's own CLI through medmoelora_eval.lm_eval_cli: the arguments and output of `lm_eval`,
# without the stock CLI's index of the ~14,000 task files lm-eval ships (6 s of each job on 2 cores).
# lm_eval's --limit is one number for every task (and per MMLU subject); --samples takes a file that
# lists the document indices per task, so the per-task limits of config `eval.limits` become one
# samples file (N documents of each task drawn with a fixed seed: the first N, as --limit takes them, can be
# one-sided: the first 20 PubMedQA test questions are all "yes"). --log_samples keeps every document's
# outcome: results/eval/{model}/<task>.samples.jsonl (loglikelihood per choice, correct or not), so that two
# runs can be compared document by document.


rule eval_samples:
    input:
        DATA_DIR,
    output:
        "results/eval/samples.json",
    log:
        "logs/eval_samples/eval_samples.log",
    benchmark:
        "results/benchmarks/eval_samples/eval_samples.tsv"
    conda:
        "../envs/medmoelora.yaml"
    params:
        limits=" ".join(f"{task}={limit}" for task, limit in config["eval"]["limits"].items()),
    shell:
        "python -m medmoelora_eval.results samples --data {input} --limits {params.limits} --out {output} 2> {log}"


rule eval:
    input:
        model=MODEL_DIR,
        data=DATA_DIR,
        samples="results/eval/samples.json",
        adapter=get_eval_adapter,
    output:
        expand("results/eval/{{model}}/{task}.json", task=EVAL_NAMES),
        expand("results/eval/{{model}}/{task}.samples.jsonl", task=EVAL_NAMES),
        full="results/eval/{model}/lm_eval_results.json",
    log:
        "logs/eval/{model}.log",
    benchmark:
        "results/benchmarks/eval/{model}.tsv"
    conda:
        "../envs/medmoelora.yaml"
    threads: compute("eval", "threads")
    resources:
        gpu=compute("eval", "gpus"),
        mem_mb=compute("eval", "mem_mb"),
        runtime=compute("eval", "runtime"),
    params:
        model=lambda wildcards: get_eval_model(wildcards)["model"],
        model_args=lambda wildcards: get_eval_model(wildcards)["model_args"],
        metadata=lambda wildcards, input: json.dumps({"data_dir": input.data}),
        tasks=LM_EVAL_TASKS,
        batch_size=config["eval"]["batch_size"],
        out=subpath(output.full, parent=True),
    shell:
        # Only the registry's RUN_TASKS: a subset of MMLU's subjects shares them with all of MMLU, and
        # lm_eval refuses the same subtask twice in one call, so results.py computes it from them.
        """
        raw=$(mktemp -d "{resources.tmpdir}/lm_eval.XXXXXX")
        trap 'rm -rf "$raw"' EXIT
        python -m medmoelora_eval.lm_eval_cli --model {params.model} --model_args {params.model_args} \
            --include_path benchmark/tasks --tasks {params.tasks} --samples {input.samples} \
            --metadata {params.metadata:q} --batch_size {params.batch_size} --seed 0 \
            --output_path "$raw" --log_samples >{log} 2>&1
        python -m medmoelora_eval.results split "$raw" --run {wildcards.model} --out {params.out} 2>>{log}
        """
