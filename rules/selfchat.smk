# Self-chat: one job per setting and shard; the model loads once per job.


rule selfchat:
    input:
        model=MODEL,
        pool=f"{R}/personas.json",
    output:
        protected(directory(f"{R}/transcripts/{{setting}}/shard-{{shard}}")),
    log:
        f"{LOGS}/selfchat/{{setting}}/shard-{{shard}}.log",
    conda:
        "../envs/model.yaml"
    threads: config["resources"]["threads"]
    resources:
        **model_resources(),
    params:
        cfg=stage_params(*MODEL_SECTIONS, "interventions"),
        model_dir=lambda wildcards, input: os.path.dirname(input.model),
        # outside the output: Snakemake deletes outputs of failed jobs, checkpoints survive
        checkpoints=lambda wildcards: f"{R}/checkpoints/{wildcards.setting}/shard-{wildcards.shard}",
    shell:
        "personadrift selfchat --params {params.cfg:q} --setting {wildcards.setting}"
        " --shard {wildcards.shard} --model-dir {params.model_dir} --pool {input.pool}"
        " --out {output} --checkpoints {params.checkpoints} --threads {threads} > {log} 2>&1"
