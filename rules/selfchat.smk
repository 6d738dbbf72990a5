# Self-chat: one job per setting and shard; the model loads once per job.


rule selfchat:
    input:
        model=MODEL,
        pool=rules.select_personas.output.pool,
    output:
        protected(directory(f"{RESULTS}/transcripts/{{setting}}/shard-{{shard}}")),
    log:
        f"{LOGS}/selfchat/{{setting}}/shard-{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/selfchat/{{setting}}/shard-{{shard}}.tsv"
    priority: selfchat_priority
    conda:
        "../envs/model.yaml"
    threads: config["resources"]["threads"]
    resources:
        **model_resources(),
    params:
        config_json=setting_params(*MODEL_KEYS, "seed", "selfchat"),
        model_dir=lambda wildcards, input: os.path.dirname(input.model),
        # outside the output: Snakemake deletes outputs of failed jobs, checkpoints survive
        checkpoints=lambda wildcards: f"{RESULTS}/checkpoints/{wildcards.setting}/shard-{wildcards.shard}",
    shell:
        "personadrift selfchat --params {params.config_json:q} --setting {wildcards.setting:q}"
        " --shard {wildcards.shard:q} --model-dir {params.model_dir:q} --pool {input.pool:q}"
        " --out {output:q} --checkpoints {params.checkpoints:q} --threads {threads}"
        " --attempt {resources.attempt} --no-retry-note {log:q}.no-retry --require-gpus {resources.required_gpus}"
        " --gpu-memory-gb {resources.gpu_memory_gb} --mem-mb {resources.mem_mb} > {log:q} 2>&1"
