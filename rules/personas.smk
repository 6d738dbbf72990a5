# The persona pool: round-0 adherence per persona, and the personas a study keeps.

from personadrift.protocol.personas import (
    persona_files,
    topics_file,
    upstream_personas_path,
    upstream_topics_path,
)

# The study's persona and topic files (imported from upstream with personas.upstream_file and
# personas.upstream_topics_file): inputs of the rules that read them, so an import runs first
# and an edit reruns calibration.
PERSONA_FILES = persona_files(config)
TOPICS_FILE = topics_file(config)


localrules:
    select_personas,
    import_upstream,
    import_upstream_topics,


rule calibrate:
    input:
        model=MODEL,
        personas=PERSONA_FILES,
        topics=TOPICS_FILE,
    output:
        f"{RESULTS}/calibration.csv",
    log:
        f"{LOGS}/calibrate.log",
    benchmark:
        f"{BENCHMARKS}/calibrate.tsv"
    priority: PRIORITY_POOL
    conda:
        "../envs/model.yaml"
    threads: config["resources"]["threads"]
    resources:
        **model_resources(),
    params:
        # calibration scores with the fluency gate, so that one scoring key decides the pool
        config_json=config_provider(
            *MODEL_KEYS,
            *SAMPLING_KEYS,
            "seed",
            "personas.files",
            "personas.topics",
            "personas.upstream_file",
            "personas.upstream_sha256",
            "personas.upstream_topics_file",
            "personas.upstream_topics_sha256",
            "personas.calibration.samples",
            "personas.calibration.max_new_tokens",
            "scoring.english_fluency_gate",
        ),
        model_dir=lambda wildcards, input: os.path.dirname(input.model),
    shell:
        "personadrift calibrate --params {params.config_json:q} --model-dir {params.model_dir:q}"
        " --threads {threads} --out {output:q}"
        " --attempt {resources.attempt} --no-retry-note {log:q}.no-retry --require-gpus {resources.required_gpus}"
        " --gpu-memory-gb {resources.gpu_memory_gb} --mem-mb {resources.mem_mb} > {log:q} 2>&1"


rule select_personas:
    input:
        calibration=rules.calibrate.output[0],
        personas=PERSONA_FILES,
        topics=TOPICS_FILE,
    output:
        pool=f"{RESULTS}/personas.json",
        summary=f"{RESULTS}/tables/calibration_by_persona.csv",
    log:
        f"{LOGS}/select_personas.log",
    benchmark:
        f"{BENCHMARKS}/select_personas.tsv"
    priority: PRIORITY_POOL
    conda:
        "../envs/analysis.yaml"
    params:
        config_json=config_provider("personas"),
    shell:
        "personadrift select-personas --params {params.config_json:q} --calibration {input.calibration:q}"
        " --out {output.pool:q} --summary {output.summary:q} > {log:q} 2>&1"


# The paper's own personas (personas.upstream_file, supplied by the user): parsed with ast,
# checked against personas.upstream_sha256, every item translated or the rule fails (--strict);
# the report (deliberate differences, upstream quirks) is written next to the personas.
rule import_upstream:
    input:
        config["personas"]["upstream_file"] or "hundred_system_prompts.py",
    output:
        personas=upstream_personas_path(config),
        report=os.path.join(
            os.path.dirname(upstream_personas_path(config)), "report.yaml"
        ),
    log:
        f"{LOGS}/import_upstream.log",
    benchmark:
        f"{BENCHMARKS}/import_upstream.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        sha256=config["personas"]["upstream_sha256"],
        out=lambda wildcards, output: os.path.dirname(output.personas),
    shell:
        "personadrift import-upstream {input:q} --out {params.out:q}"
        " --sha256 {params.sha256:q} --strict > {log:q} 2>&1"


# The paper's opener topics (personas.upstream_topics_file, its utils.py, supplied by the user):
# the module-level list parsed with ast, checked against personas.upstream_topics_sha256.
rule import_upstream_topics:
    input:
        config["personas"]["upstream_topics_file"] or "utils.py",
    output:
        upstream_topics_path(config),
    log:
        f"{LOGS}/import_upstream_topics.log",
    benchmark:
        f"{BENCHMARKS}/import_upstream_topics.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        sha256=config["personas"]["upstream_topics_sha256"] or "",
        out=lambda wildcards, output: os.path.dirname(output[0]),
    shell:
        "personadrift import-upstream-topics {input:q} --out {params.out:q}"
        " --sha256 {params.sha256:q} > {log:q} 2>&1"
