# The study's outputs manifest: the fingerprint of every transcript (dialog and probe texts),
# score and figure table, and every claim's verdict, which `personadrift verify` compares a
# rerun with (make verify; the end of make figures).

# the score and figure tables, and what decided the persona pool
MANIFEST_TABLES = sorted(
    {
        rules.calibrate.output[0],
        rules.select_personas.output.pool,
        rules.select_personas.output.summary,
        *expand(rules.score.output[0], setting=SETTINGS),
        *(
            expand(rules.mmlu.output[0], setting=MITIGATION)
            if "tradeoff_stability_mmlu" in FIGURE_TABLES
            else []
        ),
        *(t for tables in FIGURE_TABLES.values() for t in tables),
        *CONTROL_TABLES,
    }
)


localrules:
    study_manifest,


rule study_manifest:
    input:
        transcripts=[d for s in SETTINGS for d in transcripts(s)],
        tables=MANIFEST_TABLES,
    output:
        f"{RESULTS}/manifest.json",
    log:
        f"{LOGS}/manifest.log",
    benchmark:
        f"{BENCHMARKS}/manifest.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        # the folder the manifest describes: the one it is written in
        results=lambda wildcards, output: os.path.dirname(output[0]),
        study=STUDY,
    shell:
        "personadrift study-manifest --results {params.results:q} --study {params.study:q} --out {output:q}"
        " {input.tables:q} > {log:q} 2>&1"
