# The model under study: fetched once, checked against its pinned sha256.


localrules:
    fetch_model,


# A localrule: compute nodes of many clusters have no internet access.
rule fetch_model:
    output:
        MODEL,
    log:
        f"{LOGS}/fetch_model.log",
    conda:
        "../envs/model.yaml"
    params:
        cfg=stage_params("model", "backend", "openai"),
        folder=lambda wildcards, output: os.path.dirname(output[0]),
    shell:
        "personadrift fetch-model --params {params.cfg:q} --out {params.folder} > {log} 2>&1"
