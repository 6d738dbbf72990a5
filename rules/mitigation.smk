# Controlling drift: every setting (method x grid value) reruns the self-chat on the same
# seeds and persona pairs (rules/selfchat.smk); here its capability cost on MMLU, and the
# paired comparison of all settings.


localrules:
    fetch_mmlu,
    tradeoff,


# A localrule: compute nodes of many clusters have no internet access.
rule fetch_mmlu:
    output:
        "resources/mmlu/mmlu.jsonl",
    log:
        f"{LOGS}/fetch_mmlu.log",
    conda:
        "../envs/model.yaml"
    params:
        cfg=stage_params("mmlu"),
    shell:
        "personadrift fetch-mmlu --params {params.cfg:q} --out {output} > {log} 2>&1"


rule mmlu:
    input:
        model=MODEL,
        mmlu="resources/mmlu/mmlu.jsonl",
    output:
        f"{R}/mmlu/{{setting}}.csv",
    log:
        f"{LOGS}/mmlu/{{setting}}.log",
    conda:
        "../envs/model.yaml"
    threads: config["resources"]["threads"]
    resources:
        **model_resources(),
    params:
        cfg=stage_params(*MODEL_SECTIONS, "interventions", "mmlu"),
        model_dir=lambda wildcards, input: os.path.dirname(input.model),
    shell:
        "personadrift mmlu --params {params.cfg:q} --setting {wildcards.setting}"
        " --model-dir {params.model_dir} --mmlu {input.mmlu} --threads {threads}"
        " --out {output} > {log} 2>&1"


rule tradeoff:
    input:
        scores=expand(f"{R}/scores/{{setting}}.csv", setting=SETTINGS),
        mmlu=expand(f"{R}/mmlu/{{setting}}.csv", setting=SETTINGS),
    output:
        tradeoff=f"{R}/tables/tradeoff.csv",
        by_round=f"{R}/tables/mitigation_by_round.csv",
    log:
        f"{LOGS}/tables/tradeoff.log",
    conda:
        "../envs/model.yaml"
    params:
        cfg=stage_params("scoring", "interventions"),
    shell:
        "personadrift tradeoff --params {params.cfg:q} --scores {input.scores}"
        " --mmlu {input.mmlu} --out {output.tradeoff} --by-round {output.by_round} > {log} 2>&1"
