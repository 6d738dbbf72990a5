# The persona pool: round-0 adherence per persona, and the personas a study keeps.

from personadrift.benchmark.personas import persona_files, upstream_personas_path

# The study's persona files (the imported upstream personas with personas.upstream_file): an
# input of the rules that read them, so an import runs first and an edit reruns calibration.
PERSONA_FILES = persona_files(config)


localrules:
    select_personas,
    import_upstream,


rule calibrate:
    input:
        model=MODEL,
        personas=PERSONA_FILES,
    output:
        f"{R}/calibration.csv",
    log:
        f"{LOGS}/calibrate.log",
    conda:
        "../envs/personadrift.yaml"
    threads: config["resources"]["threads"]
    resources:
        **model_resources(),
    params:
        cfg=stage_params(*MODEL_SECTIONS),
        model_dir=lambda wildcards, input: os.path.dirname(input.model),
    shell:
        "personadrift calibrate --params {params.cfg:q} --model-dir {params.model_dir}"
        " --threads {threads} --out {output} > {log} 2>&1"


rule select_personas:
    input:
        calibration=f"{R}/calibration.csv",
        personas=PERSONA_FILES,
    output:
        pool=f"{R}/personas.json",
        summary=f"{R}/tables/calibration_by_persona.csv",
    log:
        f"{LOGS}/select_personas.log",
    conda:
        "../envs/personadrift.yaml"
    params:
        cfg=stage_params("personas"),
    shell:
        "personadrift select-personas --params {params.cfg:q} --calibration {input.calibration}"
        " --out {output.pool} --summary {output.summary} > {log} 2>&1"


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
    conda:
        "../envs/personadrift.yaml"
    params:
        sha256=config["personas"]["upstream_sha256"],
        out=lambda wildcards, output: os.path.dirname(output.personas),
    shell:
        "python -m personadrift.benchmark.upstream {input:q} --out {params.out:q}"
        " --sha256 {params.sha256} --strict > {log} 2>&1"
