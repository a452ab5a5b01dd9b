"""The logic of the Colab notebooks in the repository's `notebooks/` folder, importable and tested:
`quickstart` (lima_quickstart.ipynb: runtime detection, model download, recipe scaling, before/after
answers) and `superficial` (superficial_alignment.ipynb: the superficial-alignment experiment)."""
