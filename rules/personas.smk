# The persona pool: round-0 adherence per persona, and the personas a study keeps.


localrules:
    select_personas,
    import_upstream,


rule calibrate:
    input:
        model=MODEL,
    output:
        f"{R}/calibration.csv",
    log:
        f"{LOGS}/calibrate.log",
    conda:
        "../envs/model.yaml"
    threads: config["resources"]["threads"]
    resources:
        **model_resources(),
    params:
        # calibration scores with the fluency gate, so that one scoring key decides the pool
        cfg=config_provider(
            *MODEL_KEYS,
            *SAMPLING_KEYS,
            "seed",
            "personas.files",
            "personas.topics",
            "personas.calibration.samples",
            "personas.calibration.max_new_tokens",
            "scoring.english_fluency_gate",
        ),
        model_dir=lambda wildcards, input: os.path.dirname(input.model),
    shell:
        "pd calibrate --params {params.cfg:q} --model-dir {params.model_dir:q}"
        " --threads {threads} --out {output:q} > {log:q} 2>&1"


rule select_personas:
    input:
        rules.calibrate.output,
    output:
        pool=f"{R}/personas.json",
        summary=f"{R}/tables/calibration_by_persona.csv",
    log:
        f"{LOGS}/select_personas.log",
    conda:
        "../envs/analysis.yaml"
    params:
        cfg=config_provider("personas"),
    shell:
        "pd select-personas --params {params.cfg:q} --calibration {input:q}"
        " --out {output.pool:q} --summary {output.summary:q} > {log:q} 2>&1"


# Optional: convert the paper's own persona file (github likenneth/persona_drift, commit
# e5b57b0, hundred_system_prompts.py, downloaded by the user) into this project's YAML:
#   snakemake personas/upstream/pattern.yaml --cores 1
# then list personas/upstream/*.yaml under personas.files in the config.
rule import_upstream:
    input:
        "personas/upstream/hundred_system_prompts.py",
    output:
        expand(
            "personas/upstream/{category}.yaml",
            category=(
                "pattern",
                "multiple_choice",
                "persona",
                "memorization",
                "language",
            ),
        ),
    log:
        f"{LOGS}/import_upstream.log",
    conda:
        "../envs/analysis.yaml"
    shell:
        "personadrift import-upstream {input} --out personas/upstream > {log} 2>&1"
