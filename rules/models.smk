# The model under study: fetched once, checked against its pinned sha256.


localrules:
    fetch_model,


# A localrule: compute nodes of many clusters have no internet access.
rule fetch_model:
    output:
        f"resources/models/{config['model']['name']}/manifest.json",
    log:
        f"{LOGS}/fetch_model.log",
    benchmark:
        f"{BENCHMARKS}/fetch_model.tsv"
    conda:
        "../envs/model.yaml"
    params:
        config_json=config_provider(
            f"model-{LOAD_KEYS}", "openai.base_url", "openai.model"
        ),
        folder=lambda wildcards, output: os.path.dirname(output[0]),
    shell:
        "personadrift fetch-model --params {params.config_json:q} --out {params.folder:q} > {log:q} 2>&1"


MODEL = rules.fetch_model.output[0]
