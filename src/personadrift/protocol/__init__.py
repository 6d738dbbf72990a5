"""The measurement protocol: the persona definitions (system prompt, probe, judge), the judges,
scoring probe answers, and the importers of the paper's released personas and topics."""
