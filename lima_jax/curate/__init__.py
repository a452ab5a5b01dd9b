"""Curation: LIMA's filters, near-duplicate removal, decontamination, selection and reports.

``python -m lima_jax.curate ...`` runs them on a raw dump; the modules are importable on their own.
"""
