"""Corpora: source layouts, readers, validation, the Beam manifest ETL, manifest parts, the
demo synth."""
