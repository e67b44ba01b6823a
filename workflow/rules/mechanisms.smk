# Mechanism analyses of the Med-MoE-LoRA run (claims role med_moe_lora: config claims.runs, else the run of
# that name) -> results/mechanisms/ (docs/mechanisms.md):
# - expert ablation: every seed evaluated again without its base experts and without its specialists
#   (lm_eval ... disable_experts=base|specialists, the same documents), then ablation.csv and dual_path.csv;
# - routing specialisation by depth from the routing_stats.json of the config's allocation runs
#   (tables.allocation), and the subspace overlap of the run's experts, each with a figure across depth.
# The names and input functions are in common.smk (MECHANISM_RUN, MECHANISMS, get_ablation_*).
rule mechanisms:
    input:
        MECHANISMS,


rule eval_ablation:
    input:
        model=MODEL_DIR,
        data=DATA_DIR,
        samples="results/eval/samples.json",
        adapter=get_ablation_adapter,
    output:
        expand("results/mechanisms/eval/{{ablation}}/seed{{seed}}/{task}.json", task=EVAL_NAMES),
        expand("results/mechanisms/eval/{{ablation}}/seed{{seed}}/{task}.samples.jsonl", task=EVAL_NAMES),
        full="results/mechanisms/eval/{ablation}/seed{seed}/lm_eval_results.json",
    log:
        "logs/eval_ablation/{ablation}/seed{seed}.log",
    benchmark:
        "results/benchmarks/eval_ablation/{ablation}/seed{seed}.tsv"
    wildcard_constraints:
        ablation="|".join(ABLATION_SPECS),
    conda:
        "../envs/medmoelora.yaml"
    threads: compute("eval", "threads")
    resources:
        gpu=compute("eval", "gpus"),
        mem_mb=compute("eval", "mem_mb"),
        runtime=compute("eval", "runtime"),
    params:
        model_args=get_ablation_model_args,
        metadata=lambda wildcards, input: json.dumps({"data_dir": input.data}),
        tasks=LM_EVAL_TASKS,
        batch_size=config["eval"]["batch_size"],
        out=subpath(output.full, parent=True),
    shell:
        # The eval rule's command (eval.smk), with the experts removed through --model_args.
        """
        raw=$(mktemp -d "{resources.tmpdir}/lm_eval.XXXXXX")
        trap 'rm -rf "$raw"' EXIT
        python -m medmoelora_eval.lm_eval_cli --model medmoelora --model_args {params.model_args} \
            --include_path benchmark/tasks --tasks {params.tasks} --samples {input.samples} \
            --metadata {params.metadata:q} --batch_size {params.batch_size} --seed 0 \
            --output_path "$raw" --log_samples >{log} 2>&1
        python -m medmoelora_eval.results split "$raw" --run {wildcards.ablation} --out {params.out} 2>>{log}
        """


rule mechanisms_ablation:
    input:
        eval_files([MECHANISM_RUN] if MECHANISM_RUN else [], SAMPLES),
        expand(
            "results/mechanisms/eval/{ablation}/seed{seed}/{task}.samples.jsonl",
            ablation=ABLATION_SPECS,
            seed=SEEDS,
            task=EVAL_NAMES,
        ),
    output:
        table=report(
            "results/mechanisms/ablation.csv", caption="../report/mechanisms_ablation.rst", category="Mechanisms"
        ),
        dual_path="results/mechanisms/dual_path.csv",
    log:
        "logs/mechanisms_ablation/mechanisms_ablation.log",
    benchmark:
        "results/benchmarks/mechanisms_ablation/mechanisms_ablation.tsv"
    conda:
        "../envs/medmoelora.yaml"
    params:
        all_experts=lambda wildcards: f"results/eval/{mechanism_run()}",
        # the ablated evaluations' directories, from their files (results/mechanisms/eval/<ablation>/)
        without_base=lambda wildcards, input: ablation_dir(input, "without_base"),
        without_specialists=lambda wildcards, input: ablation_dir(input, "without_specialists"),
        seeds=seed_args(),
    shell:
        "python -m medmoelora_eval.mechanisms.ablation --all-experts {params.all_experts}"
        " --without-base {params.without_base} --without-specialists {params.without_specialists}"
        " --seeds {params.seeds} --out {output.table} --dual-path {output.dual_path} 2> {log}"


rule mechanisms_routing:
    input:
        train_files(ALLOCATION.values(), "routing_stats.json"),
    output:
        "results/mechanisms/routing_specialisation.csv",
    log:
        "logs/mechanisms_routing/mechanisms_routing.log",
    benchmark:
        "results/benchmarks/mechanisms_routing/mechanisms_routing.tsv"
    conda:
        "../envs/medmoelora.yaml"
    params:
        # label=file per allocation and seed: mutual information and entropy do not depend on how a seed
        # numbers its experts, so the seeds of one allocation pool
        sources=" ".join(
            shlex.quote(f"{label}={path}")
            for label, run in ALLOCATION.items()
            for path in train_files([run], "routing_stats.json")
        ),
    shell:
        "python -m medmoelora_eval.mechanisms.routing {params.sources} --out {output} 2> {log}"


rule mechanisms_subspace:
    input:
        train_files([MECHANISM_RUN] if MECHANISM_RUN else [], "adapter_model.safetensors"),
        train_files([MECHANISM_RUN] if MECHANISM_RUN else [], "adapter_config.json"),
    output:
        "results/mechanisms/subspace_overlap.csv",
    log:
        "logs/mechanisms_subspace/mechanisms_subspace.log",
    benchmark:
        "results/benchmarks/mechanisms_subspace/mechanisms_subspace.tsv"
    conda:
        "../envs/medmoelora.yaml"
    params:
        adapters=lambda wildcards: " ".join(f"results/train/{name}" for name in run_dirs(mechanism_run())),
    shell:
        "python -m medmoelora_eval.mechanisms.subspace {params.adapters} --out {output} 2> {log}"


rule figure_routing_by_depth:
    input:
        "results/mechanisms/routing_specialisation.csv",
    output:
        report(
            "results/mechanisms/routing_by_depth.png",
            caption="../report/mechanisms_routing.rst",
            category="Mechanisms",
        ),
    log:
        "logs/figure_routing_by_depth/figure_routing_by_depth.log",
    benchmark:
        "results/benchmarks/figure_routing_by_depth/figure_routing_by_depth.tsv"
    conda:
        "../envs/medmoelora.yaml"
    shell:
        "python -m medmoelora_eval.mechanisms.figures routing {input} --out {output} 2> {log}"


rule figure_subspace_by_depth:
    input:
        "results/mechanisms/subspace_overlap.csv",
    output:
        report(
            "results/mechanisms/subspace_by_depth.png",
            caption="../report/mechanisms_subspace.rst",
            category="Mechanisms",
        ),
    log:
        "logs/figure_subspace_by_depth/figure_subspace_by_depth.log",
    benchmark:
        "results/benchmarks/figure_subspace_by_depth/figure_subspace_by_depth.tsv"
    conda:
        "../envs/medmoelora.yaml"
    shell:
        "python -m medmoelora_eval.mechanisms.figures subspace {input} --out {output} 2> {log}"
