"""A finished study in other tools' formats (read-only on the study's transcripts and scores)."""
