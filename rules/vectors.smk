# Persona vectors: per kept persona, its direction in the residual stream at one layer (the
# kept personas' calibration answers teacher-forced with and without their system prompt;
# protocol/persona_vectors.py). Made for every layer a setting's method asks for (Method.inputs);
# rerun only when the model, the pool or the calibration changes.


rule persona_vectors:
    input:
        model=MODEL,
        pool=rules.select_personas.output.pool,
        calibration=rules.calibrate.output[0],
    output:
        vectors=vectors_path(RESULTS, "{layer}"),
        sidecar=str(sidecar_path(vectors_path(RESULTS, "{layer}"))),
    log:
        f"{LOGS}/persona_vectors/layer{{layer}}.log",
    benchmark:
        f"{BENCHMARKS}/persona_vectors/layer{{layer}}.tsv"
    wildcard_constraints:
        layer=r"\d+",
    # it gates its settings' self-chats, as calibration gates all of them
    priority: PRIORITY_POOL
    conda:
        "../envs/model.yaml"
    threads: config["resources"]["threads"]
    resources:
        **model_resources(),
    params:
        config_json=config_provider(*MODEL_KEYS),
        model_dir=lambda wildcards, input: os.path.dirname(input.model),
        key=vector_keys,
    shell:
        "personadrift persona-vectors --params {params.config_json:q} --layer {wildcards.layer}"
        " --model-dir {params.model_dir:q} --pool {input.pool:q} --calibration {input.calibration:q}"
        " --out {output.vectors:q} --key {params.key:q} --threads {threads}"
        " --attempt {resources.attempt} --no-retry-note {log:q}.no-retry --require-gpus {resources.required_gpus}"
        " --gpu-memory-gb {resources.gpu_memory_gb} --mem-mb {resources.mem_mb} > {log:q} 2>&1"
