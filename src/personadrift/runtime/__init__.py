"""Wiring a fetched model, a setting and a backend into a running engine: the one engine
factory the workflow's steps and the benchmarks use, and the OpenAI-compatible server. It sits
after ``interventions`` because both ask the setting's method what to switch on."""
