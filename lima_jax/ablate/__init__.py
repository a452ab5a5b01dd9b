"""LIMA's quantity / quality / diversity ablations (section 5), end to end.

`config` holds an ablation's config and its cells, `subsets` builds and checks each cell's
training subset, `runner` trains, decodes and grades every cell (resuming cell by cell),
`report` writes the table and chart, and `cli` is the command ``python -m lima_jax.ablate``.
"""
