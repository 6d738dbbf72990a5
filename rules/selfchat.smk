# Self-chat: one job per setting and shard; the model loads once per job. A setting runs in its
# backend's environment (runtime/backends/): the project's own (rule selfchat) or vLLM's
# (rule selfchat_vllm: envs/vllm.yaml, or .venv-vllm without --sdm conda).


rule selfchat:
    input:
        unpack(method_inputs),
        model=MODEL,
        pool=rules.select_personas.output.pool,
    output:
        protected(directory(f"{RESULTS}/transcripts/{{setting}}/shard-{{shard}}")),
    log:
        f"{LOGS}/selfchat/{{setting}}/shard-{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/selfchat/{{setting}}/shard-{{shard}}.tsv"
    wildcard_constraints:
        setting=one_of(SELFCHAT_ENVS.get(MODEL_ENV, [])),
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
        cli=env_cli(MODEL_ENV),
        method_inputs=method_inputs_json,
    shell:
        "{params.cli} selfchat --params {params.config_json:q} --setting {wildcards.setting:q}"
        " --shard {wildcards.shard:q} --model-dir {params.model_dir:q} --pool {input.pool:q}"
        " --out {output:q} --checkpoints {params.checkpoints:q} --threads {threads}"
        " --method-inputs {params.method_inputs:q}"
        " --attempt {resources.attempt} --no-retry-note {log:q}.no-retry --require-gpus {resources.required_gpus}"
        " --gpu-memory-gb {resources.gpu_memory_gb} --mem-mb {resources.mem_mb} > {log:q} 2>&1"


use rule selfchat as selfchat_vllm with:
    wildcard_constraints:
        setting=one_of(SELFCHAT_ENVS.get("vllm", [])),
    conda:
        "../envs/vllm.yaml"
    params:
        config_json=setting_params(*MODEL_KEYS, "seed", "selfchat"),
        model_dir=lambda wildcards, input: os.path.dirname(input.model),
        checkpoints=lambda wildcards: f"{RESULTS}/checkpoints/{wildcards.setting}/shard-{wildcards.shard}",
        cli=env_cli("vllm"),
        method_inputs=method_inputs_json,
