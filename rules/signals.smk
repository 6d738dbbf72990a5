# Drift without a judge: every probe answer teacher-forced on the HF engine (the backend that
# gives internals, whatever backend ran the self-chat), in its dialog's context and in the fresh
# one (system prompt and probe); then tables per round, the signals' claims and their link with
# the judge. `snakemake signals_all` builds them for every setting; signals.enabled puts the
# baseline's in figures/all (off by default: docs/measurements.md, Timings); signals.layer picks
# the persona vectors of the projection (none: no projection).

SIGNALS_RESULTS = f"{RESULTS}/signals"


# The persona vectors the projection is taken on (rules/vectors.smk), when signals.layer is set.
SIGNAL_VECTORS = (
    {}
    if config["signals"]["layer"] is None
    else {"vectors": vectors_path(RESULTS, config["signals"]["layer"])}
)


# The setting's own method inputs (steering's vectors) rebuild its engine as it generated.
rule signals:
    input:
        unpack(method_inputs),
        **SIGNAL_VECTORS,
        model=MODEL,
        transcripts=lambda wildcards: transcripts(wildcards.setting),
    output:
        f"{SIGNALS_RESULTS}/{{setting}}.csv",
    log:
        f"{LOGS}/signals/{{setting}}.log",
    benchmark:
        f"{BENCHMARKS}/signals/{{setting}}.tsv"
    wildcard_constraints:
        setting=one_of(SETTINGS),
    conda:
        "../envs/model.yaml"
    threads: config["resources"]["threads"]
    resources:
        **model_resources(),
    params:
        config_json=setting_params("model", "seed", backend=INTERNALS_BACKEND),
        model_dir=lambda wildcards, input: os.path.dirname(input.model),
        method_inputs=method_inputs_json,
        vectors=lambda wildcards, input: (
            f"--vectors {shlex.quote(input.vectors)}"
            if "vectors" in input.keys()
            else ""
        ),
    shell:
        "personadrift signals --params {params.config_json:q} --setting {wildcards.setting:q}"
        " --model-dir {params.model_dir:q} --threads {threads} --out {output:q}"
        " --method-inputs {params.method_inputs:q} {params.vectors}"
        " --attempt {resources.attempt} --no-retry-note {log:q}.no-retry --require-gpus {resources.required_gpus}"
        " --gpu-memory-gb {resources.gpu_memory_gb} --mem-mb {resources.mem_mb}"
        " {input.transcripts:q} > {log:q} 2>&1"


localrules:
    signal_tables,
    signals_all,


rule signal_tables:
    input:
        signals=rules.signals.output[0],
        scores=rules.score.output[0],
    output:
        by_round=f"{RESULTS}/tables/{{setting}}/signals_by_round.csv",
        change=f"{RESULTS}/tables/{{setting}}/signals_change.csv",
        association=f"{RESULTS}/tables/{{setting}}/signals_vs_judge.json",
    log:
        f"{LOGS}/tables/signals_{{setting}}.log",
    benchmark:
        f"{BENCHMARKS}/tables/signals_{{setting}}.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        config_json=config_provider("scoring", "seed"),
    shell:
        "personadrift signal-tables --params {params.config_json:q} --scores {input.scores:q}"
        " --by-round {output.by_round:q} --change {output.change:q}"
        " --association {output.association:q} {input.signals:q} > {log:q} 2>&1"


# `snakemake signals_all`: every setting's signals and tables, and the figure beside the judge's curve.
rule signals_all:
    input:
        expand(rules.signal_tables.output, setting=SETTINGS),
        expand(f"{FIGURES}/drift_signals.{{ext}}", ext=("pdf", "png")),
